"""Recommend a training run for a prepared corpus and a device.

The rule, in order:
1. Tokens to see: the training split, repeated for `epochs` passes: 10 below 1M tokens, 4
   below 10M, 2 below 100M, then 1 (small corpora need repetition, large ones do not).
2. Model: the largest shape of `LADDER` with at most tokens_seen / 20 parameters (the
   "about 20 tokens per parameter" coverage rule); the smallest shape is the floor.
3. Batch: a device-sized number of tokens per step (CPU 4k, MPS 8k, CUDA 16k-32k) split into
   sequences of `block_size` (256 on accelerators, 128 on CPU, shorter when the validation
   split is tiny); iterations = tokens_seen / tokens_per_step.
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
import shlex
from dataclasses import dataclass

import torch

from .config import RecommendConfig
from .data import Dataset
from .device import resolve
from .errors import UserError
from .models.transformer import swiglu_hidden

LADDER = ((2, 2, 64), (4, 4, 128), (4, 4, 256), (6, 6, 384), (8, 8, 512), (12, 12, 768),
          (16, 16, 1024))  # fmt: skip
TOKENS_PER_PARAM = 20


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


def plan(train_tokens: int, val_tokens: int, vocab: int, priority: str, device: str,
         mem_gb: float) -> Plan:  # fmt: skip
    """The recommendation for a corpus (token counts, vocabulary) and a device budget."""
    model = "gpt-fast" if priority == "speed" else "gpt-plus"
    passes = epochs(train_tokens)
    seen = train_tokens * passes
    tie = train_tokens < 1_000_000
    block = 128 if device == "cpu" else 256
    while block > 16 and block * 4 > val_tokens:
        block //= 2
    step_tokens = tokens_per_step(device, mem_gb)
    batch = max(1, step_tokens // block)
    budget = mem_gb * 2**30

    def size(shape: tuple[int, int, int]) -> int:
        return estimate_params(model, shape[0], shape[2], vocab, block, tie)

    fitting = [s for s in LADDER if size(s) * TOKENS_PER_PARAM <= seen] or [LADDER[0]]
    rung = len(fitting) - 1
    while rung > 0 and size(LADDER[rung]) * 20 > budget / 2:  # 20 bytes/param of state
        rung -= 1
    n_layer, n_head, n_embd = LADDER[rung]
    n = size(LADDER[rung])
    iters = max(100, math.ceil(seen / (batch * block)))
    ema = iters >= 2000
    micro, accum = batch, 1
    memory = lambda b: estimate_memory(n, n_layer, n_head, n_embd, block, b, vocab, ema)  # noqa: E731
    while micro > 1 and memory(micro) > 0.8 * budget:
        micro, accum = micro // 2, accum * 2
    lr = 1e-3 if n < 2_000_000 else 6e-4 if n < 30_000_000 else 3e-4
    return Plan(
        model=model, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
        batch_size=micro, grad_accum_steps=accum, max_iters=iters, lr=lr,
        warmup_iters=min(500, max(10, iters // 20)),
        dropout=0.2 if passes >= 10 else 0.1 if passes > 1 else 0.0, tie_weights=tie,
        ema_decay=0.999 if ema else 0.0, eval_interval=max(50, iters // 20), params=n,
        tokens_seen=seen,
        memory_bytes=memory(micro),
    )  # fmt: skip


def train_command(cfg: RecommendConfig, p: Plan, mode: str, device: str) -> str:
    args = ["python", "cli.py", "train", "--mode", mode, "--data-dir", str(cfg.data_dir)]
    if cfg.tokenizer_path:
        args += ["--tokenizer-path", str(cfg.tokenizer_path)]
    args += [
        "--ckpt-dir", str(cfg.ckpt_dir), "--model", p.model, "--device", device,
        "--n-layer", p.n_layer, "--n-head", p.n_head, "--n-embd", p.n_embd,
        "--block-size", p.block_size, "--batch-size", p.batch_size,
        "--grad-accum-steps", p.grad_accum_steps, "--max-iters", p.max_iters,
        "--lr", p.lr, "--cosine-lr", "--warmup-iters", p.warmup_iters, "--min-lr", p.lr / 10,
        "--dropout", p.dropout, "--eval-interval", p.eval_interval, "--eval-iters", 50,
    ]  # fmt: skip
    if p.tie_weights:
        args.append("--tie-weights")
    if p.ema_decay:
        args += ["--ema-decay", p.ema_decay]
    return shlex.join(str(a) for a in args)


def recommend(cfg: RecommendConfig) -> tuple[str, str]:
    """Print the corpus analysis, the estimate and the train / resume commands."""
    ds = Dataset(cfg.data_dir)
    mode = ds.meta.get("mode", "char")
    if cfg.mode is not None and cfg.mode != mode:
        raise UserError(f"--mode {cfg.mode} but {cfg.data_dir} holds {mode}-level data")
    if cfg.device_mem_gb is not None and cfg.device_mem_gb <= 0:
        raise UserError(f"--device-mem-gb must be positive (got {cfg.device_mem_gb})")
    device = resolve(cfg.device)
    mem = cfg.device_mem_gb or device_memory_gb(device)
    train_tokens, val_tokens = len(ds.splits["train"]), len(ds.splits["val"])
    p = plan(train_tokens, val_tokens, ds.meta["vocab_size"], cfg.priority, device.type, mem)
    cmd = train_command(cfg, p, mode, device.type)
    resume = cmd + " " + shlex.join(["--resume", str(cfg.ckpt_dir / "latest.pt")])
    print(f"corpus: {cfg.data_dir} ({mode}), vocab {ds.meta['vocab_size']:,}, "
          f"{train_tokens:,} train / {val_tokens:,} val tokens")  # fmt: skip
    print(
        f"plan: {p.model} {p.n_layer}/{p.n_head}/{p.n_embd}, {p.params:,} parameters, "
        f"{epochs(train_tokens)} passes = {p.tokens_seen:,} tokens "
        f"(~{p.tokens_seen / p.params:.0f} per parameter), {p.tokens_per_step:,} tokens/step"
    )
    print(
        f"memory estimate: {p.memory_bytes / 2**30:.2f} GiB of {mem:.1f} GiB on "
        f"{device.type} (weights, grads, AdamW{', EMA' if p.ema_decay else ''}, activations)"
    )
    print(f"\ntrain:\n{cmd}\n\nresume (--max-iters more steps):\n{resume}")
    return cmd, resume
