"""The cost of one Hessian-vector product against one gradient, eager and compiled, and the
wall time of `cli.py analyze --what sharpness` as a user runs it.

Contenders, timed in interleaved rounds on the same params and batch (median reported):
    grad eager     `train.grad_and_value(loss)`: the gradient as the train step takes it
    hvp eager      `analysis.hvp`: torch.func.jvp of torch.func.grad (math SDPA)
    grad compiled  torch.compile of torch.func.grad(loss)
    hvp compiled   torch.compile of analysis.hvp
One eager call of each is also profiled, to split its time into matrix products and the
rest: a product's tangent costs two more products (d(AB) = dA B + A dB), so an hvp does
about 3x a gradient's matmul FLOPs, and what it spends beyond that is elementwise work.

    python -m benchmarks hvp-cost                                  # 4/4/128, then 6/6/384
    python -m benchmarks hvp-cost --shape 2/2/64 --block-size 32 --rounds 2 --no-analyze
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import torch

from benchmarks import checkpoint, cli
from yocto_fn.bench.measure import device_name, timed
from yocto_fn.bench.presets import shape_config
from yocto_fn.bench.report import jsonl, save, table
from yocto_fn.core import analysis, models
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.params import tree_map
from yocto_fn.core.train import grad_and_value

MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear",
           "aten::matmul"}  # fmt: skip


@dataclass(frozen=True)
class Config:
    """A Hessian-vector product against a gradient, eager and compiled; `analyze` wall time."""

    model: str = "gpt-fast"
    shape: str = "4/4/128"
    """n_layer/n_head/n_embd."""
    block_size: int = 128
    batch_size: int = 8
    vocab_size: int = 103
    """The default corpus's chars."""
    rounds: int = 5
    """Interleaved rounds."""
    repeats: int = 3
    """Calls per contender per round."""
    analyze: bool = True
    """Also time `cli.py analyze --what sharpness` at --analyze-shape."""
    analyze_shape: str = "6/6/384"
    analyze_block_size: int = 256
    analyze_batch_size: int = 8
    analyze_iters: int = 20
    out_dir: Path | None = None
    """Default: benchmarks/results/DATE-cpu-analysis."""


def contenders(model_name: str, cfg: ModelConfig, batch: int):
    model = models.get(model_name)
    params = model.init(cfg, 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=gen)
    b = (x[:, :-1], x[:, 1:])
    v = tree_map(lambda t: torch.randn(t.shape, generator=gen), params)
    loss = analysis.make_loss(model, cfg)
    grad = grad_and_value(loss)
    hvp = lambda p, b, v: analysis.hvp(loss, p, b, v)  # noqa: E731
    grad_c = torch.compile(lambda p, b: torch.func.grad(loss)(p, b))
    hvp_c = torch.compile(hvp)
    eager = {"grad eager": lambda: grad(params, b), "hvp eager": lambda: hvp(params, b, v)}
    compiled = {"grad compiled": lambda: grad_c(params, b),
                "hvp compiled": lambda: hvp_c(params, b, v)}  # fmt: skip
    return eager, compiled


def matmul_share(fn) -> dict[str, float]:
    """Self CPU time of one call, in matrix products and in everything else (ms)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e3
    return {"matmul_ms": round(mm, 2), "other_ms": round(total - mm, 2)}


def time_products(cfg: Config) -> list[dict]:
    mcfg = shape_config(cfg.shape, cfg.block_size, cfg.vocab_size)
    eager, compiled = contenders(cfg.model, mcfg, cfg.batch_size)
    compile_s = {}
    for name, fn in compiled.items():
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    fns = eager | compiled
    for fn in fns.values():
        timed(fn, torch.device("cpu"), 1, 0)
    seconds = {name: [] for name in fns}
    for _ in range(cfg.rounds):
        for name, fn in fns.items():
            seconds[name] += timed(fn, torch.device("cpu"), 0, cfg.repeats)
    profiles = {name: matmul_share(fn) for name, fn in eager.items()}
    rows = []
    for name, values in seconds.items():
        mode = name.split()[1]
        base = statistics.median(seconds[f"grad {mode}"])
        rows.append({
            "benchmark": "hvp-cost", "contender": name, "model": cfg.model,
            "shape": cfg.shape, "block_size": mcfg.block_size, "batch_size": cfg.batch_size,
            "ms": 1e3 * statistics.median(values), "min_ms": 1e3 * min(values),
            "max_ms": 1e3 * max(values), "repeats": len(values),
            "vs_grad": statistics.median(values) / base,
            "compile_s": compile_s.get(name), "profile": profiles.get(name),
        })  # fmt: skip
    return rows


def time_analyze(cfg: Config) -> dict:
    """One `analyze --what sharpness` process at --analyze-shape, start to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp), cfg.analyze_shape, cfg.analyze_block_size, model=cfg.model,
                          batch_size=cfg.analyze_batch_size)  # fmt: skip
        flags = ["--what", "sharpness", "--iters", str(cfg.analyze_iters), "--batches", "1",
                 "--device", "cpu"]  # fmt: skip
        done = cli("analyze", "--ckpt", str(ckpt), *flags)
        result = orjson.loads((ckpt.parent / "analysis" / "sharpness-iter1.json").read_bytes())
    return {
        "benchmark": "analyze-sharpness", "model": cfg.model, "shape": cfg.analyze_shape,
        "block_size": cfg.analyze_block_size, "batch_size": cfg.analyze_batch_size,
        "flags": " ".join(flags), "wall_s": done.seconds, "measure_s": result["seconds"],
        "parameters": result["parameters"], "top_eigenvalue": result["result"]["values"][0],
        "line": done.stdout.strip().splitlines()[-1],
    }  # fmt: skip


def hvp_table(rows: list[dict], analyze: dict | None, header: str) -> str:
    head = ("contender", "ms per call", "min–max", "vs grad (same mode)",
            "matmul / other ms (profile)", "compile s")  # fmt: skip
    body = []
    for r in rows:
        prof = r["profile"]
        shown = f"{prof['matmul_ms']:.1f} / {prof['other_ms']:.1f}" if prof else "–"
        comp = f"{r['compile_s']:.0f}" if r["compile_s"] else "–"
        body.append((r["contender"], f"{r['ms']:.1f}", f"{r['min_ms']:.1f}–{r['max_ms']:.1f}",
                     f"{r['vs_grad']:.2f}×", shown, comp))  # fmt: skip
    lines = [header, "", table(head, body, "lrrrrr")]
    if analyze:
        a = analyze
        lines += ["", f"`analyze {a['flags']}` at {a['shape']} (block {a['block_size']}, "
                  f"{a['batch_size']} rows, {a['parameters']:,} parameters): "
                  f"{a['wall_s']:.1f} s wall, {a['measure_s']:.1f} s of it measuring.", "",
                  f"> {a['line']}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(cfg: Config) -> None:
    out = cfg.out_dir or Path(f"benchmarks/results/{dt.date.today()}-cpu-analysis")
    rows = time_products(cfg)
    analyze = time_analyze(cfg) if cfg.analyze else None
    header = (f"{cfg.model} {cfg.shape}, block {cfg.block_size}, batch {cfg.batch_size}, "
              f"fp32, {device_name(torch.device('cpu'))}, torch {torch.__version__}, "
              f"{dt.date.today()}; medians of {cfg.rounds} interleaved rounds of "
              f"{cfg.repeats} calls (`python -m benchmarks hvp-cost`)")  # fmt: skip
    text = hvp_table(rows, analyze, header)
    save(out, {"results.jsonl": jsonl(rows + ([analyze] if analyze else [])), "table.md": text})
    print(text, end="")
