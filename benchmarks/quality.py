"""Quality guards of the fast paths: bf16 autocast training and int8/bf16 decoding.

1. Trains the same run twice on the default corpus (char level), `--amp off` and `--amp on`
   (bf16 autocast), and compares the final validation losses.
2. Takes the fp32 run's checkpoint and, for `quantize` int8 and bf16, reports the validation
   loss of the quantised weights against fp32 and the share of 200 greedy tokens that agree
   with fp32's greedy continuation of the same prompts.

    python -m benchmarks quality                    # gpt, 4/4/128, block 128, 300 steps
    python -m benchmarks quality --max-iters 20 --eval-iters 2
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import cli
from yocto_fn.bench.measure import val_loss
from yocto_fn.bench.report import print_jsonl
from yocto_fn.core import models
from yocto_fn.core.config import ModelConfig
from yocto_fn.data import Dataset
from yocto_fn.formats import checkpoint
from yocto_fn.generate.quantize import quantize
from yocto_fn.generate.sample import generate


@dataclass(frozen=True)
class Config:
    """bf16 training and int8/bf16 decoding against fp32: val loss and greedy agreement."""

    model: str = "gpt"
    max_iters: int = 300
    eval_iters: int = 20
    tokens: int = 200
    """Greedy tokens compared per prompt."""


def run(cfg: Config) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cli("prepare-char", "--out-dir", str(data))
        common = ["train", "--data-dir", str(data), "--model", cfg.model, "--max-iters",
                  str(cfg.max_iters), "--eval-interval", str(cfg.max_iters), "--eval-iters",
                  str(cfg.eval_iters), "--device", "cpu"]  # fmt: skip
        losses = {}
        for amp in ("off", "on"):
            cli(*common, "--ckpt-dir", str(Path(tmp) / amp), "--amp", amp)
            ckpt = checkpoint.load(Path(tmp) / amp / "latest.pt")
            losses[amp] = ckpt["best_val_loss"]
        gap = losses["on"] / losses["off"] - 1
        rows.append({"check": "bf16 autocast training", "relative": round(gap, 4),
                     "val_loss_fp32": round(losses["off"], 4),
                     "val_loss_bf16": round(losses["on"], 4)})  # fmt: skip

        ckpt = checkpoint.load(Path(tmp) / "off" / "latest.pt")
        mcfg, model = ModelConfig.from_dict(ckpt["model_config"]), models.get(ckpt["arch"])
        ds, p = Dataset(data), ckpt["params"]
        prompts = ds.get_batch("val", 8, 16, torch.Generator().manual_seed(1))[0]
        base_loss = val_loss(model, p, mcfg, ds, cfg.eval_iters, 32, mcfg.block_size)
        base = generate(model, p, mcfg, prompts, max_new_tokens=cfg.tokens, temperature=0)
        for mode in ("int8", "bf16"):
            q = quantize(p, mode)
            loss = val_loss(model, q, mcfg, ds, cfg.eval_iters, 32, mcfg.block_size)
            out = generate(model, q, mcfg, prompts, max_new_tokens=cfg.tokens, temperature=0)
            rows.append({"check": f"{mode} decoding", "val_loss_fp32": round(base_loss, 4),
                         f"val_loss_{mode}": round(loss, 4),
                         "relative": round(loss / base_loss - 1, 4),
                         "greedy_agreement": round((out == base).float().mean().item(), 4),
                         "identical_rows": f"{int((out == base).all(1).sum())}/{len(out)}",
                         })  # fmt: skip
    print_jsonl(row | {"model": cfg.model, "steps": cfg.max_iters} for row in rows)
