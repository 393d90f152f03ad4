"""AdamW against the default recipe (Muon): val loss by step and by wall time, and step cost.

curves: for every seed, each recipe trains once with `cli.py train` (seed-major, recipes
alternating, so a drift in the machine's speed hits all alike). "adamw LR" is AdamW at
each of --adamw-lrs with the sweeps' warmup and cosine decay; "default" is `train` with
no optimizer or schedule flags, i.e. the shipped recipe. From each run's metrics.csv
(time_sec counts training steps only, not evaluation) the table gives the best and final
val loss, the training seconds, and the seconds to reach the best AdamW rate's best val
loss (its median over seeds), interpolated between evaluations.

step: the compiled train step of AdamW and of Muon at the same shape, timed in
interleaved rounds (`probe.timed_rounds`); the ratio is Muon's step time over AdamW's
(`against.py` holds these steps against another checkout's, and the GPU suite times them at
GPT-2 small).

    python -m benchmarks optimizers --shape demo --max-iters 2000 --seeds 1 2 3 --adamw-lrs 4e-3 \
        --default-iters 1000 2000
    python -m benchmarks optimizers --parts step --shape demo

Writes results.jsonl, table.md and curves.png to --out-dir, and each run's metrics.csv
under --out-dir/runs/ as soon as it ends.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks import cli
from yocto_fn import fileio
from yocto_fn.bench.report import jsonl, plot, print_jsonl, save
from yocto_fn.core.config import ModelConfig
from yocto_fn.plan import probe

SHAPES = {  # name: (model, n_layer, n_head, n_embd, block, batch)
    "demo": ("gpt-fast", 4, 4, 128, 128, 32),
    "wide": ("gpt-fast", 6, 6, 384, 256, 8),
}


@dataclass(frozen=True)
class Config:
    """AdamW against the default recipe (Muon): val loss by step and by wall time; step cost."""

    parts: tuple[Literal["curves", "step"], ...] = ("curves", "step")
    shape: Literal["demo", "wide"] = "demo"
    text_path: Path | None = None
    """Corpus (default: the embedded one)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    max_iters: int = 2000
    eval_interval: int = 100
    eval_iters: int = 10
    adamw_lrs: tuple[float, ...] = (4e-3,)
    """AdamW's rates: its best from a sweep, or a few."""
    default_iters: tuple[int, ...] = ()
    """The default recipe's lengths (default: --max-iters)."""
    rounds: int = 15
    """Step part: interleaved rounds."""
    out_dir: Path | None = None
    """Default: benchmarks/results/DATE-cpu-optimizers-SHAPE."""


def recipes(cfg: Config) -> dict[str, tuple[list[str], int]]:
    """Name: (flags, steps). AdamW at each rate over --max-iters, with the sweeps' warmup,
    cosine and --min-lr; then the defaults over each of --default-iters (a schedule that
    ends where a small corpus runs out beats a longer one that overfits)."""
    adamw = {f"adamw {lr:g}": (["--optimizer", "adamw", "--lr", str(lr), "--schedule", "cosine",
                                "--warmup-iters", "100"], cfg.max_iters)
             for lr in cfg.adamw_lrs}  # fmt: skip
    lengths = cfg.default_iters or [cfg.max_iters]
    return adamw | {
        "default" if n == cfg.max_iters else f"default {n} steps": ([], n) for n in lengths
    }


def shape_flags(shape: str) -> list[str]:
    model, layers, heads, embd, block, batch = SHAPES[shape]
    return ["--model", model, "--n-layer", str(layers), "--n-head", str(heads), "--n-embd",
            str(embd), "--block-size", str(block), "--batch-size", str(batch)]  # fmt: skip


def train_run(data: Path, flags: list[str], steps: int, seed: int, cfg: Config,
              keep: Path) -> list[dict]:  # fmt: skip
    """One `train` run; its evaluations as {iter, time_sec, val_loss}. Its metrics.csv is
    copied to `keep` at once, so a stopped benchmark loses no finished run."""
    with tempfile.TemporaryDirectory() as tmp:
        cli("train", "--data-dir", str(data), "--ckpt-dir", tmp, *shape_flags(cfg.shape),
            "--max-iters", str(steps), "--eval-interval", str(cfg.eval_interval),
            "--eval-iters", str(cfg.eval_iters), "--seed", str(seed), "--device", "cpu",
            "--save-strategy", "none", *flags)  # fmt: skip
        raw = (Path(tmp) / "metrics.csv").read_bytes()
    fileio.atomic_write_bytes(keep, raw)
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    return [{"iter": int(r["iter"]), "time_sec": float(r["time_sec"]),
             "val_loss": float(r["val_loss"])} for r in rows]  # fmt: skip


def seconds_to(rows: list[dict], target: float) -> float | None:
    """Training seconds at which the val loss first reaches `target`, linear between
    evaluations (None: never)."""
    prev = {"time_sec": 0.0, "val_loss": float("inf")}
    for r in rows:
        if r["val_loss"] <= target:
            if prev["val_loss"] == float("inf"):
                return r["time_sec"]
            frac = (prev["val_loss"] - target) / (prev["val_loss"] - r["val_loss"])
            return prev["time_sec"] + frac * (r["time_sec"] - prev["time_sec"])
        prev = r
    return None


def curves(cfg: Config, out_dir: Path) -> list[dict]:
    """Every seed's run of every recipe, seed-major; each run's metrics.csv kept under
    `out_dir`/runs as it ends."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prep = ["prepare-char", "--out-dir", str(data)]
        if cfg.text_path:
            prep += ["--text-path", str(cfg.text_path)]
        cli(*prep)
        runs_dir = out_dir / "runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        for seed in cfg.seeds:
            for name, (flags, steps) in recipes(cfg).items():
                keep = runs_dir / f"{name.replace(' ', '_')}_seed{seed}.metrics.csv"
                rows = train_run(data, flags, steps, seed, cfg, keep)
                row = {"part": "curves", "shape": cfg.shape, "recipe": name, "steps": steps,
                       "seed": seed, "corpus": cfg.text_path.name if cfg.text_path else "default",
                       "flags": flags, "evals": rows}  # fmt: skip
                print_jsonl([{k: v for k, v in row.items() if k != "evals"} | {"final": rows[-1]}])
                out.append(row)
    return out


def curves_table(runs: list[dict]) -> str:
    """Per recipe: best and final val loss, training seconds, and the seconds to reach
    AdamW's best val loss (the median over seeds of each run's lowest evaluation; with a
    small corpus the last evaluation can be past the point where val turns up)."""
    by = {}
    for r in runs:
        by.setdefault(r["recipe"], []).append(r["evals"])

    def best_val(evals: list[list[dict]]) -> float:
        return statistics.median(min(p["val_loss"] for p in e) for e in evals)

    adamw = min((n for n in by if n.startswith("adamw")), key=lambda n: best_val(by[n]))
    target = best_val(by[adamw])
    base = statistics.median(e[-1]["time_sec"] for e in by[adamw])
    lines = [
        f"AdamW's best val loss ({adamw}, the best rate; median of {len(by[adamw])} seeds): "
        f"{target:.4f}\n",
        "| recipe | best val (median, min-max) | final val (median) | train s "
        "| s to AdamW's best | vs AdamW's train s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, evals in by.items():
        best = [min(p["val_loss"] for p in e) for e in evals]
        hit = [t for t in (seconds_to(e, target) for e in evals) if t is not None]
        med = statistics.median(hit) if hit else None
        some = "" if len(hit) == len(evals) else f" ({len(hit)} of {len(evals)} seeds)"
        lines.append(
            f"| {name} | {statistics.median(best):.4f} ({min(best):.4f}-{max(best):.4f}) "
            f"| {statistics.median(e[-1]['val_loss'] for e in evals):.4f} "
            f"| {statistics.median(e[-1]['time_sec'] for e in evals):.0f} "
            f"| {'-' if med is None else f'{med:.0f}{some}'} "
            f"| {'-' if med is None else f'{med / base:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"


def curves_plot(runs: list[dict]) -> bytes:
    """Val loss against step and against training seconds, a line per run."""
    names = list(dict.fromkeys(r["recipe"] for r in runs))
    palette = ("tab:blue", "tab:green", "tab:purple", "tab:orange")
    colors = {n: "tab:red" if n == "default" else palette[i % 4] for i, n in enumerate(names)}

    def draw(axes) -> None:
        for r in runs:
            e = r["evals"]
            label = f"{r['recipe']} (seed {r['seed']})"
            for ax, x in zip(axes[0], ("iter", "time_sec"), strict=True):
                ax.plot([p[x] for p in e], [p["val_loss"] for p in e],
                        color=colors[r["recipe"]], alpha=0.7, label=label)  # fmt: skip
        axes[0, 0].set_xlabel("step")
        axes[0, 1].set_xlabel("training seconds")
        axes[0, 0].set_ylabel("val loss")
        for ax in axes[0]:
            ax.grid(alpha=0.3)
        axes[0, 1].legend(fontsize="small")

    return plot(draw, 1, 2, (11, 4.5), sharey=True)


STEP_CONTENDERS = {
    "adamw": ("adamw", "fp32"),
    "muon": ("muon", "fp32"),
    "muon-bf16-ns": ("muon", "bf16"),
}  # name: (optimizer, Newton-Schulz dtype)


def step_contenders(
    model: str, cfg: ModelConfig, batch: int, device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Callable[[int], float]]:  # fmt: skip
    """The compiled train step of each of STEP_CONTENDERS at the default settings
    (`probe.stepper`: `one(i)` runs step i and waits for the device)."""
    return {
        name: probe.stepper(probe.StepSpec(model, cfg, batch, compile=True, optimizer=opt,
                                           muon_ns_dtype=ns), device, amp_dtype)
        for name, (opt, ns) in STEP_CONTENDERS.items()
    }  # fmt: skip


def step_cost(cfg: Config) -> dict:
    """Tokens/s of the compiled AdamW and Muon steps at the default settings, interleaved."""
    model, layers, heads, embd, block, batch = SHAPES[cfg.shape]
    mcfg = ModelConfig(vocab_size=65, n_layer=layers, n_head=heads, n_embd=embd,
                       block_size=block, tie_weights=False)  # fmt: skip
    cpu = torch.device("cpu")
    ones = step_contenders(model, mcfg, batch, cpu)
    rates = probe.timed_rounds(ones, batch * block, cfg.rounds, 3, 0.0)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"part": "step", "shape": cfg.shape, "compiled": True, "amp": "fp32",
            "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
            "muon_step_over_adamw": round(med["adamw"] / med["muon"], 3),
            "muon_bf16_ns_step_over_adamw": round(med["adamw"] / med["muon-bf16-ns"], 3),
            "rounds": cfg.rounds, "torch": torch.__version__,
            "cpu": probe.device_name(cpu), "threads": torch.get_num_threads()}  # fmt: skip


def run(cfg: Config) -> None:
    today = dt.date.today().isoformat()
    out = cfg.out_dir or Path(f"benchmarks/results/{today}-cpu-optimizers-{cfg.shape}")
    rows, text, files = [], "", {}
    if "curves" in cfg.parts:
        runs = curves(cfg, out)
        rows += runs
        text += f"## {cfg.shape}, {runs[0]['corpus']} corpus, AdamW over {cfg.max_iters} steps\n\n"
        text += curves_table(runs) + "\n"
        files["curves.png"] = curves_plot(runs)
    if "step" in cfg.parts:
        row = step_cost(cfg)
        print_jsonl([row])
        rows.append(row)
        rates = row["tokens_per_s"]
        text += (f"Compiled fp32 step at {cfg.shape}, tokens/s (median of {cfg.rounds} "
                 f"interleaved rounds): AdamW {rates['adamw']:,.0f}, Muon {rates['muon']:,.0f} "
                 f"({row['muon_step_over_adamw']:.2f}x AdamW's step time), Muon with bf16 "
                 f"Newton-Schulz {rates['muon-bf16-ns']:,.0f} "
                 f"({row['muon_bf16_ns_step_over_adamw']:.2f}x).\n")  # fmt: skip
    save(out, {"results.jsonl": jsonl(rows), "table.md": text, **files})
    print(text)
