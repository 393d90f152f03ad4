"""Recommend a training run for a prepared corpus and a device.

With `--time-budget`, the plan is the one with the lowest expected validation loss this
device reaches in that wall time:
1. Each candidate shape of `BUDGET_SHAPES` (gpt-fast or gpt-plus, block 64, batch 16: the
   setting the law was calibrated in) is timed here (`probe`, cached), largest last.
2. Its steps: of those the budget leaves after start-up and the evaluations, the number
   the calibrated law (`law.py`) expects to reach the lowest loss at its parameters, given
   the corpus's unique tokens and hardness (on a small corpus, all of them would overfit).
   The shape with the lowest expected loss wins.
3. Dropout and learning rate follow the calibration grid: no dropout (it lost in four of
   its six pairs and tied in the other two), and a lower lr for larger models.

Without it, the plan spends what a fixed rule of thumb would (compute = 6 x parameters x
tokens, for 20 tokens per parameter over `epochs` passes) and the law splits that compute
between model size and tokens:
1. Tokens the rule would see: the training split, repeated for `epochs` passes: 10 below 1M
   tokens, 4 below 10M, 2 below 100M, then 1.
2. Model: of the `LADDER` shapes, the one the law expects to reach the lowest loss on the
   same compute (tokens = compute / 6 / its parameters).
3. Batch: a device-sized number of tokens per step (CPU 4k, MPS 8k, CUDA 16k-32k) split into
   sequences of `block_size` (256 on accelerators, 128 on CPU, shorter when the validation
   split is tiny); iterations = tokens / tokens_per_step.
4. Memory: params + grads + AdamW moments + EMA (20 bytes/param in fp32) plus activations
   (per layer about 2·B·T·C·(34 + 5·H·T/C) bytes, after Korthikanti et al., fp32) plus the
   logits (12·B·T·V bytes). Over 80% of the budget, the micro-batch halves and gradient
   accumulation doubles (same tokens per step); a model whose weights and optimizer state
   alone pass half the budget steps down the ladder.
More data or more memory can only move up the ladder, never down.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RecommendConfig
from ..core.config import ModelConfig
from ..core.models.transformer import swiglu_hidden
from ..data import Dataset
from ..device import resolve
from ..errors import UserError
from . import law as laws
from . import probe

LADDER = ((2, 2, 64), (4, 4, 128), (4, 4, 256), (6, 6, 384), (8, 8, 512), (12, 12, 768),
          (16, 16, 1024))  # fmt: skip
TOKENS_PER_PARAM = 20
BUDGET_SHAPES = ((2, 2, 64), (4, 4, 128), (4, 4, 192), (6, 4, 256), (6, 6, 384), (8, 8, 512),
                 (12, 12, 768))  # fmt: skip
BUDGET_BLOCK, BUDGET_BATCH = 64, 16
STARTUP_SECONDS = 8.0  # interpreter, torch, data, the first plot: measured 6-8 s on 2 cores
EVALS, EVAL_ITERS = 5, 20
MIN_STEPS = 500
# The grid's reach: its largest model had 10.2 parameters per unique training token; budget
# plans stay inside it rather than trust the law's overfitting term beyond.
MAX_PARAMS_PER_TOKEN = 10.5
DROPOUT = 0.0  # dropout 0.1: lost 4 of the grid's 6 pairs, tied at 11 passes in the other 2

StepTime = Callable[[str, ModelConfig, int], float]


@dataclass(frozen=True)
class Plan:
    model: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    grad_accum_steps: int
    max_iters: int
    lr: float
    warmup_iters: int
    dropout: float
    tie_weights: bool
    ema_decay: float
    eval_interval: int
    params: int
    tokens_seen: int
    memory_bytes: int
    eval_iters: int = 50
    expected_loss: float | None = None
    expected_seconds: float | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.block_size


def epochs(train_tokens: int) -> int:
    for limit, passes in ((1_000_000, 10), (10_000_000, 4), (100_000_000, 2)):
        if train_tokens < limit:
            return passes
    return 1


def estimate_params(model: str, n_layer: int, n_embd: int, vocab: int, block: int,
                    tie: bool) -> int:  # fmt: skip
    """Exact parameter count of a variant (the tests compare it with `params.count`)."""
    C = n_embd
    if model == "gpt-plus":
        per_layer = 4 * C * C + 3 * C * swiglu_hidden(C) + 2 * C
        return vocab * C + n_layer * per_layer + C + (0 if tie else vocab * C)
    biases = model == "gpt"
    per_layer = 12 * C * C + 4 * C + (9 * C if biases else 0)  # 2 LayerNorms (w, b), biases
    return vocab * C + block * C + n_layer * per_layer + 2 * C + (0 if tie else vocab * C)


def estimate_memory(params: int, n_layer: int, n_head: int, n_embd: int, block: int,
                    batch: int, vocab: int, ema: bool) -> int:  # fmt: skip
    state = params * (20 if ema else 16)
    activations = n_layer * 2 * batch * block * n_embd * (34 + 5 * n_head * block / n_embd)
    return int(state + activations + 12 * batch * block * vocab)


def device_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    if device.type == "mps":
        return 8.0
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def tokens_per_step(device: str, mem_gb: float) -> int:
    if device == "cuda":
        return 32_768 if mem_gb >= 24 else 16_384
    return 8_192 if device == "mps" else 4_096


def lr_for(params: int) -> float:
    """2e-3 beat 1e-3 for the small shapes of the grid; larger models take less."""
    return 2e-3 if params < 3_000_000 else 1e-3 if params < 30_000_000 else 3e-4


def plan(train_tokens: int, val_tokens: int, vocab: int, priority: str, device: str,
         mem_gb: float, hardness: float = 1.3, law: laws.Law | None = None) -> Plan:  # fmt: skip
    """The recommendation for a corpus (token counts, vocabulary, hardness) and a device."""
    law = law or laws.load()
    model = "gpt-fast" if priority == "speed" else "gpt-plus"
    passes = epochs(train_tokens)
    tie = train_tokens < 1_000_000
    block = 128 if device == "cpu" else 256
    while block > 16 and block * 4 > val_tokens:
        block //= 2
    step_tokens = tokens_per_step(device, mem_gb)
    batch = max(1, step_tokens // block)
    budget = mem_gb * 2**30

    def size(shape: tuple[int, int, int]) -> int:
        return estimate_params(model, shape[0], shape[2], vocab, block, tie)

    rule = [s for s in LADDER if size(s) * TOKENS_PER_PARAM <= train_tokens * passes]
    compute = 6 * size((rule or LADDER[:1])[-1]) * train_tokens * passes
    roomy = [s for s in LADDER if size(s) * 20 <= budget / 2] or [LADDER[0]]  # 20 B/param
    expected = {s: law.predict(size(s), compute / 6 / size(s), train_tokens, hardness)
                for s in roomy}  # fmt: skip
    shape = min(roomy, key=lambda s: (expected[s], size(s)))
    n_layer, n_head, n_embd = shape
    n = size(shape)
    seen = int(compute / 6 / n)
    iters = max(100, math.ceil(seen / (batch * block)))
    ema = iters >= 2000
    micro, accum = batch, 1
    memory = lambda b: estimate_memory(n, n_layer, n_head, n_embd, block, b, vocab, ema)  # noqa: E731
    while micro > 1 and memory(micro) > 0.8 * budget:
        micro, accum = micro // 2, accum * 2
    return Plan(
        model=model, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
        batch_size=micro, grad_accum_steps=accum, max_iters=iters, lr=lr_for(n),
        warmup_iters=min(500, max(10, iters // 20)),
        dropout=DROPOUT, tie_weights=tie,
        ema_decay=0.999 if ema else 0.0, eval_interval=max(50, iters // 20), params=n,
        tokens_seen=seen, memory_bytes=memory(micro), expected_loss=expected[shape],
    )  # fmt: skip


def parse_budget(text: str) -> float:
    """`90s`, `5m`, `1h`, `1h30m`, `2.5m` -> seconds; anything else is a UserError."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*"
                         r"(?:(\d+(?:\.\d+)?)s)?\s*", text.lower())  # fmt: skip
    if not text.strip() or parts is None or not any(parts.groups()):
        raise UserError(
            f"--time-budget {text!r} is not a duration: write e.g. 90s, 5m, 1h or 1h30m"
        )
    h, m, s = (float(g or 0) for g in parts.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds < 2 * STARTUP_SECONDS:
        raise UserError(
            f"--time-budget {text} leaves no time to train (start-up alone takes about "
            f"{STARTUP_SECONDS:.0f} s); give at least 30s"
        )
    return seconds


def budget_candidate(model: str, shape: tuple[int, int, int], seconds: float, vocab: int,
                     train_tokens: int, hardness: float, step: float,
                     law: laws.Law) -> Plan | None:  # fmt: skip
    """One shape's run at `step` seconds per step: the number of steps, up to what
    `seconds` allows, that the law expects to reach the lowest loss (on a small corpus,
    more passes end up overfitting), or None if it cannot take MIN_STEPS steps or is too
    large for the corpus."""
    n_layer, n_head, n_embd = shape
    block, batch = BUDGET_BLOCK, BUDGET_BATCH
    n = estimate_params(model, n_layer, n_embd, vocab, block, False)
    eval_seconds = EVALS * 2 * EVAL_ITERS * step / 3  # two splits, forward only
    most = int((seconds - STARTUP_SECONDS - eval_seconds) / step)
    if most < MIN_STEPS or n > MAX_PARAMS_PER_TOKEN * train_tokens:
        return None
    tried = {most, *(int(MIN_STEPS * 1.02**k) for k in range(400))}
    loss = {it: law.predict(n, it * batch * block, train_tokens, hardness)
            for it in tried if it <= most}  # fmt: skip
    iters = min(loss, key=lambda it: (loss[it], it))
    seen = iters * batch * block
    return Plan(
        model=model, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
        batch_size=batch, grad_accum_steps=1, max_iters=iters, lr=lr_for(n),
        warmup_iters=max(10, iters // 20), dropout=DROPOUT,
        tie_weights=False, ema_decay=0.0, eval_interval=math.ceil(iters / EVALS), params=n,
        tokens_seen=seen, memory_bytes=estimate_memory(n, n_layer, n_head, n_embd, block, batch,
                                                       vocab, False),
        eval_iters=EVAL_ITERS, expected_loss=loss[iters],
        expected_seconds=STARTUP_SECONDS + iters * step + eval_seconds,
    )  # fmt: skip


def plan_for_budget(seconds: float, train_tokens: int, vocab: int, hardness: float,
                    priority: str, mem_gb: float, step_time: StepTime,
                    law: laws.Law | None = None) -> Plan:  # fmt: skip
    """The candidate with the lowest expected loss. Shapes are timed smallest first, and the
    search stops at the first that is too large, or too slow for MIN_STEPS steps: measured,
    or foreseen from the last one timed (a step costs at least in proportion to the
    parameters), so a short budget never waits on timing a large model."""
    law = law or laws.load()
    model = "gpt-fast" if priority == "speed" else "gpt-plus"
    best: Plan | None = None
    last: tuple[int, float] | None = None
    for shape in BUDGET_SHAPES:
        n = estimate_params(model, shape[0], shape[2], vocab, BUDGET_BLOCK, False)
        memory = estimate_memory(n, *shape, BUDGET_BLOCK, BUDGET_BATCH, vocab, False)
        if memory > 0.8 * mem_gb * 2**30:
            break
        if last and (seconds - STARTUP_SECONDS) / (last[1] * n / last[0]) < MIN_STEPS:
            break
        cfg = ModelConfig(vocab_size=vocab, block_size=BUDGET_BLOCK, n_layer=shape[0],
                          n_head=shape[1], n_embd=shape[2], dropout=0.0)  # fmt: skip
        step = step_time(model, cfg, BUDGET_BATCH)
        last = (n, step)
        p = budget_candidate(model, shape, seconds, vocab, train_tokens, hardness, step, law)
        if p is None:
            break
        if best is None or p.expected_loss < best.expected_loss:
            best = p
    if best is None:
        smallest = BUDGET_SHAPES[0]
        raise UserError(
            f"{seconds:.0f} s is too short (or {mem_gb:g} GiB too little) for even a "
            f"{'/'.join(map(str, smallest))} model to take {MIN_STEPS} steps here; give "
            "a longer --time-budget"
        )
    return best


def train_command(cfg: RecommendConfig, p: Plan, mode: str, device: str) -> str:
    args = ["python", "cli.py", "train", "--mode", mode, "--data-dir", str(cfg.data_dir)]
    if cfg.tokenizer_path:
        args += ["--tokenizer-path", str(cfg.tokenizer_path)]
    args += [
        "--ckpt-dir", str(cfg.ckpt_dir), "--model", p.model, "--device", device,
        "--n-layer", p.n_layer, "--n-head", p.n_head, "--n-embd", p.n_embd,
        "--block-size", p.block_size, "--batch-size", p.batch_size,
        "--grad-accum-steps", p.grad_accum_steps, "--max-iters", p.max_iters,
        "--optimizer", "adamw", "--lr", p.lr, "--schedule", "cosine",
        "--warmup-iters", p.warmup_iters, "--min-lr", p.lr / 10,
        "--dropout", p.dropout, "--eval-interval", p.eval_interval, "--eval-iters", p.eval_iters,
    ]  # fmt: skip
    if p.expected_seconds is not None:
        args += ["--amp", "off"]  # as timed by the probe and calibrated
    if p.tie_weights:
        args.append("--tie-weights")
    if p.ema_decay:
        args += ["--ema-decay", p.ema_decay]
    return shlex.join(str(a) for a in args)


def recommend(cfg: RecommendConfig, step_time: StepTime | None = None) -> tuple[str, str]:
    """Print the corpus analysis, the estimate and the train / resume commands."""
    ds = Dataset(cfg.data_dir)
    mode = ds.meta.get("mode", "char")
    if cfg.mode is not None and cfg.mode != mode:
        raise UserError(f"--mode {cfg.mode} but {cfg.data_dir} holds {mode}-level data")
    if cfg.device_mem_gb is not None and cfg.device_mem_gb <= 0:
        raise UserError(f"--device-mem-gb must be positive (got {cfg.device_mem_gb})")
    seconds = parse_budget(cfg.time_budget) if cfg.time_budget is not None else None
    device = resolve(cfg.device)
    mem = cfg.device_mem_gb or device_memory_gb(device)
    train_tokens, val_tokens = len(ds.splits["train"]), len(ds.splits["val"])
    vocab = ds.meta["vocab_size"]
    hardness = laws.corpus_hardness(ds.splits["train"], ds.splits["val"], vocab)
    if seconds is None:
        p = plan(train_tokens, val_tokens, vocab, cfg.priority, device.type, mem, hardness)
    else:
        timer = step_time or (
            lambda model, mcfg, batch: probe.step_seconds(model, mcfg, batch, device)
        )
        p = plan_for_budget(seconds, train_tokens, vocab, hardness, cfg.priority, mem, timer)
    cmd = train_command(cfg, p, mode, device.type)
    resume = cmd + " " + shlex.join(["--resume", str(cfg.ckpt_dir / "latest.pt")])
    print(f"corpus: {cfg.data_dir} ({mode}), vocab {vocab:,}, {train_tokens:,} train / "
          f"{val_tokens:,} val tokens, hardness {hardness:.2f} nats/token (trigram)")  # fmt: skip
    print(
        f"plan: {p.model} {p.n_layer}/{p.n_head}/{p.n_embd}, {p.params:,} parameters, "
        f"{p.tokens_seen:,} tokens = {p.tokens_seen / train_tokens:.1f} passes "
        f"(~{p.tokens_seen / p.params:.0f} per parameter), {p.tokens_per_step:,} tokens/step"
    )
    when = f" in about {_duration(p.expected_seconds)} here" if p.expected_seconds else ""
    print(
        f"expected: val loss {p.expected_loss:.2f}{when} (the law fitted by "
        "scripts/recommend_grid.py)"
    )
    if seconds is not None and p.expected_seconds < 0.8 * seconds:
        print(f"  (shorter than the budget: {cfg.data_dir} is too small for more passes or a "
              "larger model to pay)")  # fmt: skip
    print(
        f"memory estimate: {p.memory_bytes / 2**30:.2f} GiB of {mem:.1f} GiB on "
        f"{device.type} (weights, grads, AdamW{', EMA' if p.ema_decay else ''}, activations)"
    )
    print(f"\ntrain:\n{cmd}\n\nresume (--max-iters more steps):\n{resume}")
    return cmd, resume


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
