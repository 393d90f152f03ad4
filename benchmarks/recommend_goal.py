"""The goal of `recommend --time-budget`: its plan, run exactly as printed, against the folk
CPU recipe (gpt 4/4/128, block 64, batch 12, lr 1e-3 cosine, no dropout, fp32: the
character-level recipe small-GPT READMEs give for CPUs) run for the same wall time. Both
final checkpoints are scored on the same 200 validation batches.

    python -m benchmarks recommend-goal --budget 2m --corpus default
    python -m benchmarks recommend-goal --budget 10m --corpus ../shared/data/philosophy.txt
    python -m benchmarks recommend-goal --budget 10m --reuse-folk   # only the plan runs

Appends one JSON row per run to benchmarks/results/recommend-goal/results.jsonl.
`--reuse-folk` takes the recipe's figures from the last row for the same corpus, budget,
CPU, torch and thread count instead of training it again: the recipe does not depend on
the law, so after a refit only the plan needs running.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import torch

from benchmarks import ROOT, cli
from yocto_fn.bench.measure import val_loss
from yocto_fn.bench.report import print_jsonl
from yocto_fn.core import models
from yocto_fn.core.config import ModelConfig
from yocto_fn.data import Dataset
from yocto_fn.errors import UserError
from yocto_fn.formats import checkpoint
from yocto_fn.plan import probe, recommend

RESULTS = ROOT / "benchmarks/results/recommend-goal/results.jsonl"
FOLK = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "lr": 1e-3}


LONGEST = 4 * 3600  # seconds a run of the largest budgets may take


@dataclass(frozen=True)
class Config:
    """recommend --time-budget's plan against the folk CPU recipe, for the same wall time."""

    budget: str = "2m"
    corpus: str = "default"
    """'default' or a text file."""
    reuse_folk: bool = False
    """The recipe's figures from an earlier row instead of a new run."""


def score(path: Path, ds: Dataset) -> float:
    """Mean val loss of a checkpoint over 200 fixed batches of 16 x 64 tokens."""
    ckpt = checkpoint.load(path)
    cfg, model = ModelConfig.from_dict(ckpt["model_config"]), models.get(ckpt["arch"])
    return val_loss(model, ckpt["params"], cfg, ds, 200, 16, 64)


def run_folk(data: Path, ds: Dataset, seconds: float, ckpt_dir: Path) -> dict:
    """The recipe, with as many steps as the budget allows at its measured step time."""
    folk_cfg = ModelConfig(vocab_size=ds.meta["vocab_size"], block_size=64, n_layer=4,
                           n_head=4, n_embd=128, dropout=0.0)  # fmt: skip
    step = probe.step_seconds("gpt", folk_cfg, FOLK["batch_size"], torch.device("cpu"))
    evals = recommend.EVALS * 2 * recommend.EVAL_ITERS * step / 3
    steps = int((seconds - recommend.STARTUP_SECONDS - evals) / step)
    args = ["train", "--data-dir", str(data), "--ckpt-dir", str(ckpt_dir), "--model", "gpt",
            "--device", "cpu", "--amp", "off", "--max-iters", str(steps), "--cosine-lr",
            "--warmup-iters", "100", "--min-lr", "1e-4",
            "--eval-interval", str(max(1, steps // recommend.EVALS)),
            "--eval-iters", str(recommend.EVAL_ITERS),
            *(f"--{k.replace('_', '-')}={v}" for k, v in FOLK.items())]  # fmt: skip
    wall = cli(*args, timeout=LONGEST).seconds
    return {"folk_steps": steps, "folk_wall_s": round(wall, 1),
            "folk_val_loss": round(score(ckpt_dir / "latest.pt", ds), 4)}  # fmt: skip


def earlier_folk(corpus: str, seconds: float) -> dict:
    """The recipe's figures from the last recorded row like this one, on this machine."""
    here = (corpus, seconds, probe.device_name(torch.device("cpu")), torch.__version__,
            torch.get_num_threads())  # fmt: skip
    rows = [orjson.loads(line) for line in RESULTS.read_bytes().splitlines() if line.strip()]
    for row in reversed(rows):
        if (row["corpus"], row["budget_s"], row["cpu"], row["torch"], row["threads"]) == here:
            return {k: row[k] for k in ("folk_steps", "folk_wall_s", "folk_val_loss")}
    raise UserError(f"no recorded folk run for {corpus} at {seconds:g} s here; run without "
                    "--reuse-folk")  # fmt: skip


def run(cfg: Config) -> None:
    seconds = recommend.parse_budget(cfg.budget)
    folk = earlier_folk(cfg.corpus, seconds) if cfg.reuse_folk else None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        source = [] if cfg.corpus == "default" else ["--text-path", str(Path(cfg.corpus).resolve())]
        cli("prepare-char", *source, "--out-dir", str(data))
        ds = Dataset(data)

        out = cli("recommend", "--data-dir", str(data), "--device", "cpu", "--time-budget",
                  cfg.budget, "--ckpt-dir", str(Path(tmp) / "plan")).stdout  # fmt: skip
        lines = out.splitlines()
        command = shlex.split(lines[lines.index("train:") + 1])
        predicted = float(out.split("expected: val loss ")[1].split()[0])
        plan_wall = cli(*command[2:], timeout=LONGEST).seconds
        plan_loss = score(Path(tmp) / "plan" / "latest.pt", ds)

        if folk is None:
            folk = run_folk(data, ds, seconds, Path(tmp) / "folk")

    shown = ("model", "n-layer", "n-head", "n-embd", "max-iters", "dropout", "lr")
    plan_flags = {k: command[command.index(f"--{k}") + 1] for k in shown}
    row = {
        "corpus": cfg.corpus, "budget_s": seconds, "plan": plan_flags,
        "plan_wall_s": round(plan_wall, 1), "plan_val_loss": round(plan_loss, 4),
        "predicted_val_loss": predicted, **folk, "folk_reused": cfg.reuse_folk,
        "threads": torch.get_num_threads(),
        "cpu": probe.device_name(torch.device("cpu")), "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }  # fmt: skip
    print_jsonl([row])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("ab") as f:
        f.write(orjson.dumps(row) + b"\n")
