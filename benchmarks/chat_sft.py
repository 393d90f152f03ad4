"""The chat fine-tuning recipe, chosen by a sweep: from a base trained as `make demo` trains
it, `train --init-from BASE` on the embedded conversation set at each multiple of train's
default rates (--lr and --muon-lr, and --min-lr with them) and each step count, three seeds
each. Every run is scored on the held-out topics' assistant tokens, exactly (every reply
of every validation conversation, `assistant_loss`), as is the base before fine-tuning; the
table gives each grid point's mean and sd over the seeds. Then the base and the best grid
point's first seed answer held-out questions through `chat --temperature 0`, side by side.

Each run is its own `train` process, as a user runs the recipe (`sweep` has no
--init-from).

    python -m benchmarks chat-sft --out benchmarks/results/<dir>
    python -m benchmarks chat-sft --base checkpoints/demo/best.pt --scales 1 --iters 20 \\
        --seeds 0 --replies 2
"""

from __future__ import annotations

import io
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import cli, command
from yocto_fn.bench.measure import assistant_loss
from yocto_fn.bench.report import jsonl, markdown, print_jsonl, save, table
from yocto_fn.config import ChatConfig, TrainConfig
from yocto_fn.core import models
from yocto_fn.core.config import ModelConfig
from yocto_fn.data import Dataset, default_conversations
from yocto_fn.formats import checkpoint
from yocto_fn.generate import chat

DEMO = ["--model", "gpt-fast", "--eval-interval", "200", "--eval-iters", "10"]  # make demo's


@dataclass(frozen=True)
class Config:
    """Fine-tuning rates x steps x seeds from one base: held-out assistant loss, replies."""

    base: Path | None = None
    """A base checkpoint of the default corpus (default: train one as `make demo` does)."""
    base_iters: int = 600
    """Steps of the base trained when --base is not given (make demo's)."""
    scales: tuple[float, ...] = (1.0, 0.3, 0.1)
    """Multiples of train's default --lr, --muon-lr and --min-lr."""
    iters: tuple[int, ...] = (60, 200)
    """Fine-tuning steps (--max-iters), each a run of its own."""
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup_iters: int = 20
    batch_size: int = 32
    """Conversations per step (one per row)."""
    replies: int = 10
    """Held-out questions answered by the base and the chosen recipe."""
    out: Path | None = None
    """Folder for results.jsonl and results.md (default: print only)."""


def rates(scale: float) -> list[str]:
    d = TrainConfig
    return ["--lr", f"{d.lr * scale:.3g}", "--muon-lr", f"{d.muon_lr * scale:.3g}",
            "--min-lr", f"{d.min_lr * scale:.3g}"]  # fmt: skip


def scored(ckpt_path: Path, ds: Dataset) -> float:
    ckpt = checkpoint.load(ckpt_path)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    return assistant_loss(models.get(ckpt["arch"]), ckpt["params"], cfg, ds)


def held_out_questions(n: int) -> list[str]:
    """The first user message of n validation conversations of the embedded set, spread
    over the split."""
    val = [c for c in default_conversations() if c["split"] == "val"]
    return [c["messages"][0]["content"] for c in val[:: max(1, len(val) // n)][:n]]


def answers(ckpt_path: Path, questions: list[str]) -> list[str]:
    """Greedy replies through the chat loop, each question in a fresh conversation."""
    written: list[str] = []
    stdin = io.StringIO("\n/reset\n".join(questions) + "\n")
    opts = ChatConfig(ckpt=ckpt_path, device="cpu", temperature=0.0, max_new_tokens=100)
    chat.run(opts, stdin=stdin, write=written.append)
    turns = "".join(written).split("Assistant: ")[1:]
    return [t.split("\n(history cleared)")[0].strip() for t in turns]


def run(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = cfg.base
        if base is None:
            cli("prepare-char", "--out-dir", str(root / "char"))
            cli("train", "--data-dir", str(root / "char"), "--ckpt-dir", str(root / "base"),
                "--max-iters", str(cfg.base_iters), *DEMO)  # fmt: skip
            base = root / "base" / "best.pt"
        data = root / "chat"
        cli("prepare-chat", "--vocab-from", str(base), "--out-dir", str(data))
        ds = Dataset(data)
        rows = [{"run": "base", "scale": 0.0, "iters": 0, "seed": None,
                 "assistant_loss": round(scored(base, ds), 4)}]  # fmt: skip
        print_jsonl(rows)
        for scale in cfg.scales:
            for iters in cfg.iters:
                for seed in cfg.seeds:
                    out = root / f"sft-{scale}-{iters}-{seed}"
                    cli("train", "--model", "gpt-fast", "--data-dir", str(data),
                        "--init-from", str(base), "--ckpt-dir", str(out), *rates(scale),
                        "--warmup-iters", str(min(cfg.warmup_iters, iters)),
                        "--max-iters", str(iters), "--eval-interval", str(iters),
                        "--eval-iters", "4", "--batch-size", str(cfg.batch_size),
                        "--seed", str(seed), "--amp", "off", "--device", "cpu")  # fmt: skip
                    row = {"run": out.name, "scale": scale, "iters": iters, "seed": seed,
                           "assistant_loss": round(scored(out / "latest.pt", ds), 4)}  # fmt: skip
                    rows.append(row)
                    print_jsonl([row])
        grid = summarize(rows[1:])
        best = min(grid, key=lambda g: g["mean"])
        chosen = root / f"sft-{best['scale']}-{best['iters']}-{cfg.seeds[0]}" / "latest.pt"
        questions = held_out_questions(cfg.replies)
        replies = list(zip(questions, answers(base, questions), answers(chosen, questions),
                           strict=True))  # fmt: skip
    report = results_md(cfg, rows[0]["assistant_loss"], grid, best, replies)
    print(report)
    if cfg.out:
        records = [*rows, *({"question": q, "base": b, "sft": s} for q, b, s in replies)]
        save(cfg.out, {"results.jsonl": jsonl(records), "results.md": report})


def summarize(runs: list[dict]) -> list[dict]:
    """Each grid point's held-out loss, mean and sd over its seeds."""
    points: dict[tuple[float, int], list[float]] = {}
    for r in runs:
        points.setdefault((r["scale"], r["iters"]), []).append(r["assistant_loss"])
    return [{"scale": s, "iters": n, "mean": statistics.fmean(v), "n": len(v),
             "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
            for (s, n), v in points.items()]  # fmt: skip


def cell(text: str) -> str:
    """Text as one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def results_md(cfg: Config, base_loss: float, grid: list[dict], best: dict,
               replies: list[tuple[str, str, str]]) -> str:  # fmt: skip
    d = TrainConfig
    losses = table(
        ["rate scale", "--lr", "--muon-lr", "steps", "seeds", "held-out assistant loss"],
        [["base, not fine-tuned", "", "", 0, "", f"{base_loss:.4f}"]]
        + [[g["scale"], f"{d.lr * g['scale']:.3g}", f"{d.muon_lr * g['scale']:.3g}",
            g["iters"], g["n"], f"{g['mean']:.4f} ± {g['sd']:.4f}"
            + (" (best)" if g is best else "")] for g in grid],
        "lrrrrr",
    )  # fmt: skip
    side = table(["held-out question", "base", f"fine-tuned ({best['scale']}x, "
                  f"{best['iters']} steps)"],
                 [[cell(q), cell(b), cell(s)] for q, b, s in replies], "lll")  # fmt: skip
    intro = (
        f"`{command('chat-sft', cfg)}`. Loss per assistant token over every held-out "
        "conversation (topics never trained on); mean ± sd over seeds."
    )
    return markdown("Chat fine-tuning recipe", intro,
                    {"Held-out loss": losses, "Greedy replies": side})  # fmt: skip
