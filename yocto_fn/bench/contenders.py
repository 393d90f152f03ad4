"""The contenders, defined once: zero-argument calls that each do one unit of timed work
(a train step, a decode, an ensemble step, a per-example gradient) for a variant or the
nn.Module reference. The suite (`run.py`) and the benchmarks time these same calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from yocto_fn import jit
from yocto_fn.bench.measure import matmul_params
from yocto_fn.bench.presets import CLIP, LR, PROMPT, VOCAB, WEIGHT_DECAY, EnsembleCase, Preset
from yocto_fn.bench.reference_module import ReferenceGPT, make_optimizer
from yocto_fn.bench.reference_module import train_step as reference_step
from yocto_fn.core import ensemble, models, optim, params
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.train import grad_and_value, loss_fn, make_train_step
from yocto_fn.device import autocast
from yocto_fn.generate.quantize import quantize
from yocto_fn.generate.sample import generate
from yocto_fn.generate.steps import build_decode_step

VARIANTS = (*models.NAMES, "reference")


def adamw(fused: bool | None = None) -> optim.GradientTransformation:
    """The benchmarks' optimizer, the reference's too: clip at CLIP, AdamW at LR with
    WEIGHT_DECAY (`fused`: scale_by_adam's choice of kernel)."""
    adam = optim.adamw(LR, weight_decay=WEIGHT_DECAY, fused=fused)
    return optim.chain(optim.clip_by_global_norm(CLIP), adam)


def train_step(model, cfg: ModelConfig, tx: optim.GradientTransformation, compile: bool, **kw):
    """`make_train_step`, after the host's compiler settings when compiling (`jit`)."""
    if compile:
        jit.use_safe_cxx()
    return make_train_step(model, cfg, tx, compile=compile, **kw)


def random_tokens(shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def random_batch(batch_size: int, block_size: int, device: torch.device):
    """(x, y) of random tokens [batch_size, block_size], y the next token of x."""
    data = random_tokens((batch_size, block_size + 1), device)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def functional_steps(
    variant: str, cfg: ModelConfig, device: torch.device, xy, *, tx: optim.GradientTransformation,
    amp: torch.dtype | None = None, compile: bool = False, steps: int = 1,
) -> tuple[Callable[[], Any], int]:  # fmt: skip
    """`steps` train steps of a functional variant per call (its state kept between calls),
    and N, the weights that multiply activations."""
    step = train_step(models.get(variant), cfg, tx, compile, amp_dtype=amp)
    p = params.to(models.get(variant).init(cfg, 0), device)
    state = [p, tx.init(p)]

    def run() -> None:
        for _ in range(steps):
            state[0], state[1], _ = step(state[0], state[1], xy)

    return run, matmul_params(p, cfg)


def reference_steps(
    cfg: ModelConfig, device: torch.device, xy, *, amp: torch.dtype | None = None,
    compile: bool = False, fused: bool = False, steps: int = 1,
) -> Callable[[], Any]:  # fmt: skip
    """`steps` train steps of the nn.Module reference per call, with torch.optim.AdamW
    (foreach, or `fused`)."""
    module = ReferenceGPT(cfg).to(device)
    opt = make_optimizer(module, LR, WEIGHT_DECAY, fused=fused)
    fn = torch.compile(module) if compile else module

    def run() -> None:
        for _ in range(steps):
            with autocast(device.type, amp):
                reference_step(fn, opt, *xy, CLIP)

    return run


def train_runner(
    variant: str, cfg: ModelConfig, device: torch.device, batch_size: int, mode: str
) -> tuple[Callable[[], Any], int]:
    """A zero-argument train step of `variant` in `mode`, and N. Modes: eager, compiled, bf16
    (autocast), compiled bf16; for the functional variants also "eager torch.func"
    (gradients through `torch.func.grad_and_value` instead of the default eager autograd
    path) and "... checkpointed" (with activation checkpointing)."""
    x, y = random_batch(batch_size, cfg.block_size, device)
    amp = torch.bfloat16 if "bf16" in mode else None
    compiled, remat = mode.startswith("compiled"), "checkpointed" in mode
    if variant == "reference":
        module = ReferenceGPT(cfg).to(device)
        opt = make_optimizer(module, LR, WEIGHT_DECAY)
        fn = torch.compile(module) if compiled else module
        n = sum(p.numel() for k, p in module.named_parameters() if p.dim() >= 2 and "wte" not in k
                and "wpe" not in k)  # fmt: skip

        def ref_step() -> None:
            with autocast(device.type, amp):
                reference_step(fn, opt, x, y, CLIP)

        return ref_step, n
    model = models.get(variant)
    state = {"p": params.to(model.init(cfg, 0), device)}
    tx = adamw()
    state["opt"] = tx.init(state["p"])
    step = train_step(
        model, cfg, tx, compiled, amp_dtype=amp, eager_autograd=mode != "eager torch.func",
        activation_checkpointing=remat,
    )  # fmt: skip

    def fn_step() -> None:
        state["p"], state["opt"], _ = step(state["p"], state["opt"], (x, y))

    return fn_step, matmul_params(state["p"], cfg)


@torch.no_grad()
def no_cache_decode(logits_fn: Callable[[torch.Tensor], torch.Tensor], prompt, n: int) -> None:
    """Greedy decoding with a full forward over the whole sequence per token."""
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, logits_fn(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)


def decode_runners(
    variant: str, cfg: ModelConfig, device: torch.device, preset: Preset, modes: list[str]
) -> dict[str, Callable[[], Any]]:
    """Decode (batch 1, 16-token prompt, `new_tokens`) and prefill (`prompt_tokens`) calls;
    "compiled cache int8" / "bf16" decode with `quantize`d weights."""
    prompt = random_tokens((1, PROMPT), device, 1)
    long_prompt = random_tokens((1, preset.prompt_tokens), device, 2)
    n = preset.new_tokens
    if variant == "reference":
        module = ReferenceGPT(cfg).to(device).eval()
        return {
            "no cache": lambda: no_cache_decode(module.logits, prompt, n),
            "prefill": torch.no_grad()(lambda: module.logits(long_prompt)),
        }
    model = models.get(variant)
    p = params.to(model.init(cfg, 0), device)
    fwd = lambda seq: model.forward(p, seq, cfg)[0]  # noqa: E731
    compiled = "cuda-graph" if device.type == "cuda" else "compiled"
    gen = lambda step=None: generate(  # noqa: E731
        model, p, cfg, prompt, max_new_tokens=n, temperature=0, step=step
    )
    cache = model.init_cache(cfg, 1, device=device)
    prefill = torch.no_grad()(lambda: build_decode_step(model, p, cfg)(p, long_prompt, cfg, cache))
    out = {"no cache": lambda: no_cache_decode(fwd, prompt, n), "cache": lambda: gen()}
    if "compiled cache" in modes:
        out["compiled cache"] = lambda: gen(build_decode_step(model, p, cfg, compiled))
    for mode in ("int8", "bf16"):
        if f"compiled cache {mode}" in modes:
            q = quantize(p, mode)
            out[f"compiled cache {mode}"] = functools.partial(
                generate, model, q, cfg, prompt, max_new_tokens=n, temperature=0,
                step=build_decode_step(model, q, cfg, compiled),
            )  # fmt: skip
    return out | {"prefill": prefill}


def ensemble_runners(
    variant: str, case: EnsembleCase, device: torch.device, compile: bool
) -> dict[str, Callable[[], Any]]:
    """One `make_ensemble_step` over E members against E `make_train_step` calls: the same
    members, data rows and learning rates (one per member, as in a sweep)."""
    model, cfg, E = models.get(variant), case.model_config(), case.members
    adam = optim.inject_hyperparams(optim.adamw)(lr=LR, weight_decay=WEIGHT_DECAY)
    tx = optim.chain(optim.clip_by_global_norm(CLIP), adam)
    data = random_tokens((E, case.batch_size, cfg.block_size + 1), device)
    x, y = data[..., :-1].contiguous(), data[..., 1:].contiguous()
    lrs = torch.linspace(LR, LR / 4, E, device=device)
    if compile:
        jit.use_safe_cxx()
    ens = ensemble.make_ensemble_step(model, cfg, tx, compile=compile)
    one = train_step(model, cfg, tx, compile)
    stacked = {"p": ensemble.ensemble_init(model, cfg, range(E), device)}
    stacked["opt"] = torch.func.vmap(tx.init)(stacked["p"])
    members = [params.to(model.init(cfg, i), device) for i in range(E)]
    states = [tx.init(p) for p in members]

    def ensemble_step() -> None:
        stacked["p"], stacked["opt"], _ = ens(stacked["p"], stacked["opt"], (x, y), lr=lrs)

    def loop() -> None:
        for i in range(E):
            members[i], states[i], _ = one(members[i], states[i], (x[i], y[i]), lr=lrs[i])

    mode = "compiled" if compile else "eager"
    return {f"{mode} ensemble": ensemble_step, f"{mode} loop": loop}


def per_example_runners(
    variant: str, case: EnsembleCase, device: torch.device
) -> dict[str, Callable[[], Any]]:
    """Per-example gradients of a batch (`ensemble.per_example_grads`), a loop of one-row
    gradients, and the single batch gradient (what per-example costs on top of training)."""
    model, cfg = models.get(variant), case.model_config()
    p = params.to(model.init(cfg, 0), device)
    data = random_tokens((case.batch_size, cfg.block_size + 1), device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    per_example = ensemble.per_example_grads(model, cfg)
    grad = grad_and_value(functools.partial(loss_fn, model=model, cfg=cfg, train=False))
    return {
        "per-example": lambda: per_example(p, (x, y)),
        "loop": lambda: [grad(p, (x[b : b + 1], y[b : b + 1]), None) for b in range(len(x))],
        "batch gradient": lambda: grad(p, (x, y), None),
    }
