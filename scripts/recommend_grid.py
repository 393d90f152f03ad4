"""Calibrate `recommend`: train a grid of shapes x tokens seen x dropout x lr on two corpora,
record each run's final validation loss, and fit the loss law `recommend` plans with.

The corpora are the embedded default (Python's documentation topics) and the docstrings of
a fixed list of standard-library modules; both ship with every CPython, so anyone can re-run
the grid. Each also comes cut to its first 200k characters (`default-200k`,
`stdlib-docs-200k`): there tens of passes cost minutes, and a model has several parameters
per unique token, which is where repetition turns into overfitting. Every run is gpt-fast,
char level, block 64, batch 16, AdamW with a cosine schedule to the run's end, evaluated
once at the end on 50 validation batches.

    python scripts/recommend_grid.py          # run what the results file lacks (~2 h, 2 cores)
    python scripts/recommend_grid.py --fit    # fit the law, write its coefficients and PNG

A calibration tool rather than a benchmark: `--fit` writes package data,
yocto_fn/plan/law.json, which `recommend` plans with.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import torch
import tyro

from yocto_fn import data, fileio
from yocto_fn.bench.report import plot
from yocto_fn.config import TrainConfig
from yocto_fn.data import Dataset
from yocto_fn.data.text import default_corpus_text
from yocto_fn.plan import law
from yocto_fn.plan.recommend import DROPOUT, MIN_STEPS, estimate_params, lr_for
from yocto_fn.run.trainer import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/recommend-grid/grid.jsonl"
PLOT = ROOT / "benchmarks/results/recommend-grid/law.png"
CORPORA = ROOT / "benchmarks/results/recommend-grid/corpora.json"
WORK = ROOT / "data/calibration"
BLOCK, BATCH = 64, 16
STDLIB = ("argparse", "asyncio.tasks", "calendar", "collections", "concurrent.futures", "csv",
          "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
          "fractions", "ftplib", "functools", "heapq", "http.client", "imaplib", "inspect",
          "ipaddress", "json", "logging", "mailbox", "optparse", "pathlib", "pdb", "pickle",
          "pydoc", "queue", "random", "shutil", "smtplib", "socket", "statistics", "string",
          "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest",
          "urllib.parse", "urllib.request", "zipfile")  # fmt: skip
# (n_layer, n_head, n_embd), tokens seen, dropout, lr: cheapest first, so a partial run
# already covers every shape.
SHAPES = {"2/2/64": (2, 2, 64), "4/4/128": (4, 4, 128), "4/4/192": (4, 4, 192),
          "6/4/256": (6, 4, 256)}  # fmt: skip
FULL, SMALL = ("default", "stdlib-docs"), ("default-200k", "stdlib-docs-200k")
SMALL_CHARS = 200_000
Corpus = Literal["default", "stdlib-docs", "default-200k", "stdlib-docs-200k"]
GRID = [
    *((s, t, 0.0, 2e-3) for s in ("2/2/64", "4/4/128") for t in (300_000, 1_000_000)),
    ("4/4/192", 300_000, 0.0, 2e-3), ("6/4/256", 300_000, 0.0, 1e-3),
    ("2/2/64", 1_000_000, 0.0, 1e-3),
    ("2/2/64", 3_000_000, 0.0, 2e-3), ("2/2/64", 3_000_000, 0.1, 2e-3),
    ("4/4/128", 2_000_000, 0.0, 2e-3), ("4/4/128", 2_000_000, 0.1, 2e-3),
    ("4/4/192", 1_000_000, 0.0, 2e-3), ("2/2/64", 8_000_000, 0.0, 2e-3),
    ("4/4/192", 5_000_000, 0.0, 2e-3),
]  # fmt: skip
# On the cut corpora (180k train tokens): 5 to 22 passes, up to 10 parameters per token.
SMALL_GRID = [
    ("2/2/64", 1_000_000, 0.0, 2e-3), ("4/4/128", 1_000_000, 0.0, 2e-3),
    ("4/4/128", 2_000_000, 0.0, 2e-3), ("2/2/64", 3_000_000, 0.0, 2e-3),
    ("4/4/192", 1_000_000, 0.0, 2e-3), ("4/4/128", 4_000_000, 0.0, 2e-3),
    ("4/4/192", 2_000_000, 0.0, 2e-3), ("4/4/192", 2_000_000, 0.1, 2e-3),
]  # fmt: skip


def stdlib_docs_text() -> str:
    """Docstrings (module, classes, functions, methods) of the `STDLIB` modules, in order."""
    import importlib

    seen, parts = set(), []
    for name in STDLIB:
        module = importlib.import_module(name)
        objects = [module] + [obj for _, obj in inspect.getmembers(module)
                              if getattr(obj, "__module__", None) == module.__name__]  # fmt: skip
        for obj in objects:
            members = [obj] + [m for _, m in inspect.getmembers(obj) if inspect.isfunction(m)]
            for member in members if inspect.isclass(obj) else [obj]:
                doc = inspect.getdoc(member)
                if doc and doc not in seen:
                    seen.add(doc)
                    parts.append(doc.strip())
    return "\n\n".join(parts) + "\n"


def corpus_text(name: str) -> str:
    full = stdlib_docs_text() if name.startswith("stdlib-docs") else default_corpus_text()
    return full[:SMALL_CHARS] if name in SMALL else full


def corpus_dir(name: str) -> Path:
    """The corpus prepared at char level (once) under data/calibration/<name>."""
    out = WORK / name
    if not (out / "meta.json").is_file():
        text_path = WORK / f"{name}.txt"
        text_path.parent.mkdir(parents=True, exist_ok=True)
        text_path.write_text(corpus_text(name), encoding="utf-8")
        with contextlib.redirect_stderr(io.StringIO()):
            data.prepare_char(data.PrepareCharConfig(text_path=text_path, out_dir=out))
    return out


def run_one(corpus: str, shape: str, tokens: int, dropout: float, lr: float) -> dict:
    n_layer, n_head, n_embd = SHAPES[shape]
    steps = tokens // (BLOCK * BATCH)
    cfg = TrainConfig(
        data_dir=corpus_dir(corpus), ckpt_dir=WORK / "runs" / f"{corpus}-{shape.replace('/', '_')}",
        model="gpt-fast", n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        block_size=BLOCK, batch_size=BATCH, max_iters=steps, eval_interval=steps,
        eval_iters=50, lr=lr, min_lr=lr / 10, cosine_lr=True, warmup_iters=max(10, steps // 20),
        dropout=dropout, save_strategy="none", device="cpu", amp="off",
    )  # fmt: skip
    meta = orjson.loads((cfg.data_dir / "meta.json").read_bytes())
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg)
    if result["stopped"]:
        raise SystemExit(f"{corpus} {shape}: {result['stopped']}; not recorded")
    return {
        "corpus": corpus, "shape": shape,
        "params": estimate_params("gpt-fast", n_layer, n_embd, meta["vocab_size"], BLOCK, False),
        "tokens": steps * BLOCK * BATCH, "unique": meta["train_tokens"], "dropout": dropout,
        "lr": lr, "val_loss": round(result["best_val_loss"], 4),
        "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }  # fmt: skip


def load_rows() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [orjson.loads(line) for line in RESULTS.read_bytes().splitlines() if line.strip()]


def planned(corpora: list[str]) -> list[tuple[str, str, int, float, float]]:
    """(corpus, shape, tokens, dropout, lr) of every grid run on these corpora."""
    return [(corpus, *run) for grid, group in ((GRID, FULL), (SMALL_GRID, SMALL))
            for run in grid for corpus in group if corpus in corpora]  # fmt: skip


def run_grid(corpora: list[str]) -> None:
    done = {(r["corpus"], r["shape"], r["tokens"], r["dropout"], r["lr"]) for r in load_rows()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for corpus, shape, tokens, dropout, lr in planned(corpora):
        steps = tokens // (BLOCK * BATCH)
        if (corpus, shape, steps * BLOCK * BATCH, dropout, lr) in done:
            continue
        row = run_one(corpus, shape, tokens, dropout, lr)
        print(orjson.dumps(row).decode(), flush=True)
        with RESULTS.open("ab") as f:
            f.write(orjson.dumps(row) + b"\n")
            f.flush()
            os.fsync(f.fileno())


def corpus_stats(names: list[str]) -> dict[str, dict]:
    """Unique train tokens and hardness of each corpus, recorded beside the runs so the fit
    needs only committed files."""
    stats = orjson.loads(CORPORA.read_bytes()) if CORPORA.is_file() else {}
    for name in names:
        if name not in stats:
            ds = Dataset(corpus_dir(name))
            train, val, vocab = ds.splits["train"], ds.splits["val"], ds.meta["vocab_size"]
            hardness = round(law.corpus_hardness(train, val, vocab), 4)
            stats[name] = {"unique": len(train), "hardness": hardness}
            fileio.atomic_write_bytes(CORPORA, fileio.json_bytes(stats))
    return stats


def fit_rows(rows: list[dict], stats: dict[str, dict]) -> list[dict]:
    """The runs the law is fitted to, each with its corpus's hardness: those with the
    dropout and lr `recommend` would choose (the others calibrate those rules) and at least
    `MIN_STEPS` steps (shorter runs are still in warm-up, where a larger model does no
    better; `recommend` plans no run that short)."""
    return [
        r | {"hardness": stats[r["corpus"]]["hardness"]}
        for r in rows
        if r["dropout"] == DROPOUT
        and r["lr"] == lr_for(r["params"])
        and r["tokens"] >= MIN_STEPS * BLOCK * BATCH
    ]


def pairs(rows: list[dict], field: str) -> list[str]:
    """Runs that differ only in `field` (dropout or lr), side by side: the evidence for
    `recommend`'s dropout and lr rules."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        other = "lr" if field == "dropout" else "dropout"
        groups.setdefault((r["corpus"], r["shape"], r["tokens"], r[other]), []).append(r)
    lines = []
    for (corpus, shape, tokens, _), group in sorted(groups.items()):
        if len(group) > 1:
            runs = sorted(group, key=lambda r: r[field])
            shown = ", ".join(f"{field} {r[field]:g} -> {r['val_loss']:.3f}" for r in runs)
            passes = tokens / group[0]["unique"]
            lines.append(f"{corpus:12} {shape:8} {tokens:>9,} ({passes:.1f} passes): {shown}")
    return lines


def law_plot(rows: list[dict], fitted: law.Law) -> bytes:
    """Measured final val loss against tokens seen, one colour per shape, with the law's
    curves; one panel per corpus, two panels a row."""
    corpora = sorted({r["corpus"] for r in rows})
    cols = min(2, len(corpora))

    def draw(axes) -> None:
        for ax, corpus in zip(axes.flat, corpora, strict=False):
            mine = [r for r in rows if r["corpus"] == corpus]
            xs = np.geomspace(MIN_STEPS * BLOCK * BATCH, 1.5 * max(r["tokens"] for r in mine), 60)
            for i, shape in enumerate(SHAPES):
                pts = sorted((r["tokens"], r["val_loss"]) for r in mine if r["shape"] == shape)
                if not pts:
                    continue
                color = f"C{i}"
                ax.scatter(*zip(*pts, strict=True), color=color, label=shape)
                r0 = next(r for r in mine if r["shape"] == shape)
                ax.plot(xs, [fitted.predict(r0["params"], x, r0["unique"], r0["hardness"])
                             for x in xs], color=color, alpha=0.6)  # fmt: skip
            losses = [r["val_loss"] for r in mine]
            ax.set_ylim(min(losses) - 0.15, max(losses) + 0.3)
            ax.set_xscale("log")
            ax.set_title(f"{corpus}: {mine[0]['unique']:,} train tokens, hardness "
                         f"{mine[0]['hardness']:.2f}")  # fmt: skip
            ax.set_xlabel("tokens seen")
            ax.set_ylabel("final val loss (nats/char)")
            ax.grid(alpha=0.3)
        axes.flat[0].legend(title="gpt-fast")

    return plot(draw, -(-len(corpora) // cols), cols, (6 * cols, 8))


@dataclass(frozen=True)
class Config:
    """Calibrate `recommend`: run the grid of training runs, or fit the loss law to them."""

    fit: bool = False
    """Fit the law to the recorded runs (writes yocto_fn/plan/law.json and law.png)."""
    corpora: tuple[Corpus, ...] = (*FULL, *SMALL)


def main(cfg: Config) -> None:
    if not cfg.fit:
        run_grid(list(cfg.corpora))
        return
    for field in ("dropout", "lr"):
        print("\n".join(pairs(load_rows(), field)))
    rows = fit_rows(load_rows(), corpus_stats(list(cfg.corpora)))
    fitted = law.fit(rows)
    law.save(fitted, len(rows))
    fileio.atomic_write_bytes(PLOT, law_plot(rows, fitted))
    for r in rows:
        pred = fitted.predict(r["params"], r["tokens"], r["unique"], r["hardness"])
        print(f"{r['corpus']:12} {r['shape']:8} {r['tokens']:>9,} d={r['dropout']} "
              f"lr={r['lr']:g}: {r['val_loss']:.3f} fitted {pred:.3f}")  # fmt: skip
    print(orjson.dumps(fitted.__dict__, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main(tyro.cli(Config, config=(tyro.conf.DisallowNone,)))
