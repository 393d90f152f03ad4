"""Quality guards of the fast paths: bf16 autocast training and int8/bf16 decoding.

1. Trains the same run twice on the default corpus (char level), `--amp off` and `--amp on`
   (bf16 autocast), and compares the final validation losses.
2. Takes the fp32 run's checkpoint and, for `quantize` int8 and bf16, reports the validation
   loss of the quantised weights against fp32 and the share of 200 greedy tokens that agree
   with fp32's greedy continuation of the same prompts.

    python benchmarks/quality.py                    # gpt, 4/4/128, block 128, 300 steps
    python benchmarks/quality.py --max-iters 20 --eval-iters 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proc import cli  # noqa: E402
from yocto_fn import models  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402
from yocto_fn.core.train import loss_fn  # noqa: E402
from yocto_fn.data import Dataset  # noqa: E402
from yocto_fn.formats import checkpoint  # noqa: E402
from yocto_fn.generate.quantize import quantize  # noqa: E402
from yocto_fn.generate.sample import generate  # noqa: E402


@torch.no_grad()
def val_loss(model, params, cfg: ModelConfig, ds: Dataset, batches: int) -> float:
    gen = torch.Generator().manual_seed(0)
    losses = [
        loss_fn(params, ds.get_batch("val", 32, cfg.block_size, gen), None, model=model,
                cfg=cfg, train=False).item()
        for _ in range(batches)
    ]  # fmt: skip
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt")
    ap.add_argument("--max-iters", type=int, default=300)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=200, help="greedy tokens compared per prompt")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cli("prepare-char", "--out-dir", str(data))
        common = ["train", "--data-dir", str(data), "--model", args.model, "--max-iters",
                  str(args.max_iters), "--eval-interval", str(args.max_iters), "--eval-iters",
                  str(args.eval_iters), "--device", "cpu"]  # fmt: skip
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
        cfg, model = ModelConfig.from_dict(ckpt["model_config"]), models.get(ckpt["arch"])
        ds, p = Dataset(data), ckpt["params"]
        prompts = ds.get_batch("val", 8, 16, torch.Generator().manual_seed(1))[0]
        base_loss = val_loss(model, p, cfg, ds, args.eval_iters)
        base = generate(model, p, cfg, prompts, max_new_tokens=args.tokens, temperature=0)
        for mode in ("int8", "bf16"):
            q = quantize(p, mode)
            loss = val_loss(model, q, cfg, ds, args.eval_iters)
            out = generate(model, q, cfg, prompts, max_new_tokens=args.tokens, temperature=0)
            rows.append({"check": f"{mode} decoding", "val_loss_fp32": round(base_loss, 4),
                         f"val_loss_{mode}": round(loss, 4),
                         "relative": round(loss / base_loss - 1, 4),
                         "greedy_agreement": round((out == base).float().mean().item(), 4),
                         "identical_rows": f"{int((out == base).all(1).sum())}/{len(out)}",
                         })  # fmt: skip
    for row in rows:
        print(orjson.dumps(row | {"model": args.model, "steps": args.max_iters}).decode())


if __name__ == "__main__":
    main()
