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

    python benchmarks/hvp_cost.py                                  # 4/4/128, then 6/6/384
    python benchmarks/hvp_cost.py --shape 2/2/64 --block-size 32 --rounds 2 --no-analyze
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import device_name, timed  # noqa: E402
from benchmarks.proc import cli  # noqa: E402
from yocto_fn import analysis, fileio, models  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402
from yocto_fn.core.params import tree_map  # noqa: E402
from yocto_fn.core.train import grad_and_value  # noqa: E402

MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear",
           "aten::matmul"}  # fmt: skip


def shape_config(shape: str, block: int, vocab: int) -> ModelConfig:
    n_layer, n_head, n_embd = map(int, shape.split("/"))
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
                       vocab_size=vocab)  # fmt: skip


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


def time_products(args) -> list[dict]:
    cfg = shape_config(args.shape, args.block_size, args.vocab_size)
    eager, compiled = contenders(args.model, cfg, args.batch_size)
    compile_s = {}
    for name, fn in compiled.items():
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    fns = eager | compiled
    for fn in fns.values():
        timed(fn, torch.device("cpu"), 1, 0)
    seconds = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            seconds[name] += timed(fn, torch.device("cpu"), 0, args.repeats)
    profiles = {name: matmul_share(fn) for name, fn in eager.items()}
    rows = []
    for name, values in seconds.items():
        mode = name.split()[1]
        base = statistics.median(seconds[f"grad {mode}"])
        rows.append({
            "benchmark": "hvp-cost", "contender": name, "model": args.model,
            "shape": args.shape, "block_size": cfg.block_size, "batch_size": args.batch_size,
            "ms": 1e3 * statistics.median(values), "min_ms": 1e3 * min(values),
            "max_ms": 1e3 * max(values), "repeats": len(values),
            "vs_grad": statistics.median(values) / base,
            "compile_s": compile_s.get(name), "profile": profiles.get(name),
        })  # fmt: skip
    return rows


def time_analyze(args) -> dict:
    """One `analyze --what sharpness` process at --analyze-shape, start to exit."""
    n_layer, n_head, n_embd = args.analyze_shape.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cli("prepare-char", "--out-dir", str(tmp / "data"))
        cli("train", "--data-dir", str(tmp / "data"), "--ckpt-dir", str(tmp / "run"),
            "--model", args.model, "--n-layer", n_layer, "--n-head", n_head, "--n-embd",
            n_embd, "--block-size", str(args.analyze_block_size), "--batch-size",
            str(args.analyze_batch_size), "--max-iters", "1", "--eval-interval", "1",
            "--eval-iters", "1", "--device", "cpu", "--amp", "off")  # fmt: skip
        flags = ["--what", "sharpness", "--iters", str(args.analyze_iters), "--batches", "1",
                 "--device", "cpu"]  # fmt: skip
        done = cli("analyze", "--ckpt", str(tmp / "run" / "latest.pt"), *flags)
        result = orjson.loads((tmp / "run" / "analysis" / "sharpness-iter1.json").read_bytes())
    return {
        "benchmark": "analyze-sharpness", "model": args.model, "shape": args.analyze_shape,
        "block_size": args.analyze_block_size, "batch_size": args.analyze_batch_size,
        "flags": " ".join(flags), "wall_s": done.seconds, "measure_s": result["seconds"],
        "parameters": result["parameters"], "top_eigenvalue": result["result"]["values"][0],
        "line": done.stdout.strip().splitlines()[-1],
    }  # fmt: skip


def table(rows: list[dict], analyze: dict | None, header: str) -> str:
    columns = ("contender", "ms per call", "min–max", "vs grad (same mode)",
               "matmul / other ms (profile)", "compile s")  # fmt: skip
    lines = [header, "", f"| {' | '.join(columns)} |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        prof = r["profile"]
        shown = f"{prof['matmul_ms']:.1f} / {prof['other_ms']:.1f}" if prof else "–"
        comp = f"{r['compile_s']:.0f}" if r["compile_s"] else "–"
        lines.append(f"| {r['contender']} | {r['ms']:.1f} | {r['min_ms']:.1f}–{r['max_ms']:.1f} "
                     f"| {r['vs_grad']:.2f}× | {shown} | {comp} |")  # fmt: skip
    if analyze:
        a = analyze
        lines += ["", f"`analyze {a['flags']}` at {a['shape']} (block {a['block_size']}, "
                  f"{a['batch_size']} rows, {a['parameters']:,} parameters): "
                  f"{a['wall_s']:.1f} s wall, {a['measure_s']:.1f} s of it measuring.", "",
                  f"> {a['line']}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt-fast")
    ap.add_argument("--shape", default="4/4/128", help="n_layer/n_head/n_embd")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab-size", type=int, default=103, help="the default corpus's chars")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--repeats", type=int, default=3, help="calls per contender per round")
    ap.add_argument("--analyze", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--analyze-shape", default="6/6/384")
    ap.add_argument("--analyze-block-size", type=int, default=256)
    ap.add_argument("--analyze-batch-size", type=int, default=8)
    ap.add_argument("--analyze-iters", type=int, default=20)
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="default: benchmarks/results/DATE-cpu-analysis")  # fmt: skip
    args = ap.parse_args()
    out = args.out_dir or Path(f"benchmarks/results/{dt.date.today()}-cpu-analysis")
    rows = time_products(args)
    analyze = time_analyze(args) if args.analyze else None
    header = (f"{args.model} {args.shape}, block {args.block_size}, batch {args.batch_size}, "
              f"fp32, {device_name(torch.device('cpu'))}, torch {torch.__version__}, "
              f"{dt.date.today()}; medians of {args.rounds} interleaved rounds of "
              f"{args.repeats} calls (`python benchmarks/hvp_cost.py`)")  # fmt: skip
    text = table(rows, analyze, header)
    out.mkdir(parents=True, exist_ok=True)
    records = rows + ([analyze] if analyze else [])
    fileio.atomic_write_bytes(out / "results.jsonl",
                              b"".join(orjson.dumps(r) + b"\n" for r in records))  # fmt: skip
    fileio.atomic_write_bytes(out / "table.md", text.encode())
    print(text, end="")


if __name__ == "__main__":
    main()
