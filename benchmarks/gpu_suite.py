"""The one prepared GPU run: every check and figure the CUDA work needs, in one process, in
order of priority, inside a time budget.

It runs first on the CPU (`--device cpu --tiny`: the same code paths at tiny sizes), so that
the GPU run is never the first run of any of it. Each section is timed, caught and recorded:
a failure is a result (its error line is kept), not the end of the run, and sections that no
longer fit the budget are recorded as skipped, to rerun with `--sections`. The sections are
the other benchmarks' contenders, recorded here: train-throughput's, adamw-update's,
decode-throughput's, optimizers' compiled steps and the suite itself.

Sections, in the order they run:
    env            torch, CUDA, device; measured fp32 and bf16 matmul peaks
    train-eager    eager fp32 train steps at 6/6/384 (train-throughput): every variant and
                   the nn.Module reference
    adamw          the update alone and the whole eager step (adamw-update): time, kernels
                   launched and host syncs, fused and `_foreach_*` AdamW against the
                   reference's (where the eager gap comes from)
    decode         batch-1 greedy decode at 6/6/384 (decode-throughput): no cache, cache and
                   the reference without cache; compiled, and compiled as CUDA graphs, with
                   the tokens checked equal
    train-compiled compiled fp32 and bf16 steps of gpt-fast against the reference's
                   (train-throughput)
    gpt2-adamw     GPT-2 small (12/12/768, block 1024, vocab 50304), optimizers' compiled
                   AdamW step under bf16: tokens/s and MFU against the bf16 datasheet peak
    gpt2-muon      the same with Muon (bf16 Newton-Schulz)
    cli            the user's path at a tiny size: train --compile (fp32, bf16), sample
                   --compile, chat --compile and the server's batched compiled step
    aot            the packaged (AOTInductor) decode step built, loaded and run, in a child
                   process, so that a crash in the load ends only the child
    bench          the suite (`cli.py bench --quick`) on the device

    python -m benchmarks gpu-suite --device cpu --tiny                 # the dry run
    python -m benchmarks gpu-suite --device cuda --budget-s 300        # on the GPU
    python -m benchmarks gpu-suite --device cuda --sections gpt2-muon cli

Writes `suite.jsonl` (a header, then one record per figure or check), `suite.md` (tables and
the goals) into `--out` (default: $OUT where that is set, else
benchmarks/results/<date>-<device>-suite/).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import torch

from benchmarks import adamw_update, command, decode_throughput, optimizers, train_throughput
from yocto_fn.bench import run as bench_suite
from yocto_fn.bench.contenders import random_tokens
from yocto_fn.bench.measure import (
    datasheet_peak,
    device_name,
    matmul_params,
    measured_peak,
    rates,
    sync,
    train_flops_per_token,
)
from yocto_fn.bench.presets import PROMPT, BenchConfig, model_config
from yocto_fn.bench.proc import ROOT
from yocto_fn.bench.report import jsonl, markdown, save, table
from yocto_fn.core import models, params
from yocto_fn.core.config import ModelConfig
from yocto_fn.generate.sample import generate
from yocto_fn.generate.steps import build_decode_step

SECTIONS = ("env", "train-eager", "adamw", "decode", "train-compiled", "gpt2-adamw",
            "gpt2-muon", "cli", "aot", "bench")  # fmt: skip
Section = Literal[SECTIONS]


@dataclass(frozen=True)
class Config:
    """The one prepared GPU run: every check and figure the CUDA work needs, in one budget."""

    device: str = "cuda"
    tiny: bool = False
    """Tiny sizes: the CPU dry run."""
    sections: tuple[Section, ...] = SECTIONS
    rounds: int | None = None
    """Timed rounds (default 7; tiny 2)."""
    budget_s: float = 300.0
    """Start no section after this many seconds."""
    compile: bool = True
    """Include the compiled contenders (--no-compile skips them)."""
    out: Path | None = None


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int = 96

    def config(self) -> ModelConfig:
        return model_config(self.n_layer, self.n_head, self.n_embd, self.block_size,
                            self.vocab_size)  # fmt: skip

    @property
    def dims(self) -> str:
        """The shape as the benchmarks' flags take it: "L/H/C"."""
        return f"{self.n_layer}/{self.n_head}/{self.n_embd}"

    @property
    def label(self) -> str:
        return (f"{self.dims}, block {self.block_size}, batch {self.batch_size}, "
                f"vocab {self.vocab_size}")  # fmt: skip


# (full size, --tiny) for each shape the suite uses.
SMALL = (Shape(6, 6, 384, 256, 16), Shape(2, 2, 64, 64, 4))
GPT2 = (Shape(12, 12, 768, 1024, 16, 50304), Shape(2, 2, 64, 128, 2, 512))
CLI_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "64", "--block-size", "64",
            "--batch-size", "8", "--max-iters", "30", "--eval-interval", "15",
            "--eval-iters", "2"]  # fmt: skip


@dataclass
class Suite:
    device: torch.device
    tiny: bool
    rounds: int
    compile: bool
    deadline: float
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    peaks: dict[torch.dtype, float] = field(default_factory=dict)

    def peak(self, dtype: torch.dtype) -> float:
        """The measured matmul FLOP/s in `dtype`, once per run."""
        if dtype not in self.peaks:
            self.peaks[dtype] = measured_peak(self.device, dtype, self.tiny)
        return self.peaks[dtype]

    def shape(self, pair: tuple[Shape, Shape]) -> Shape:
        return pair[1] if self.tiny else pair[0]

    def add(self, section: str, name: str, value: float | None, unit: str, **extra: Any):
        rec = {"section": section, "name": name, "value": value, "unit": unit} | extra
        self.records.append(rec)
        shown = "-" if value is None else f"{value:,.4g}"
        note = "".join(f"  {k}={v}" for k, v in extra.items() if k in ("ok", "error", "note"))
        log(f"  {section}: {name} = {shown} {unit}{note}")
        return rec

    def time_calls(self, section: str, fns: dict[str, Callable[[], Any]], work: float,
                   unit: str, **extra: Any) -> dict[str, float]:  # fmt: skip
        """Median `unit`/s of each contender over interleaved rounds after one warm-up call
        each; `work` units (tokens) per call."""
        for fn in fns.values():
            fn()
        sync(self.device)
        out = {}
        for name, per_s in rates(fns, self.device, self.rounds, work).items():
            out[name] = statistics.median(per_s)
            self.add(section, name, out[name], unit, min=min(per_s), max=max(per_s),
                     rounds=self.rounds, **extra)  # fmt: skip
        return out


def log(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- train


Contender = tuple[Callable[[], Any], int]  # a call, and N (the weights that multiply activations)


def train_figures(s: Suite, section: str, shape: Shape, fns: dict[str, Contender],
                  steps: int) -> dict[str, float]:  # fmt: skip
    """tokens/s of each contender (a call of `steps` steps, and its N), with MFU against the
    measured and datasheet peaks of its matmul dtype (bf16 for a contender named bf16, else
    fp32)."""
    calls = {name: fn for name, (fn, _) in fns.items()}
    work = steps * shape.batch_size * shape.block_size
    figures = s.time_calls(section, calls, work, "tokens/s", shape=shape.label)
    for rec in s.records[-len(fns) :]:
        dtype = torch.bfloat16 if "bf16" in rec["name"] else torch.float32
        flops = train_flops_per_token(fns[rec["name"]][1], shape.config())
        sheet = datasheet_peak(s.device, dtype)
        rec["mfu"] = flops * rec["value"] / s.peak(dtype)
        rec["mfu_datasheet"] = None if sheet is None else flops * rec["value"] / sheet
    return figures


def train_steps(s: Suite, section: str, keys: list[tuple[str, str]]) -> dict[str, float]:
    """train-throughput's contenders at the suite's 6/6/384 shape, five steps a call,
    named "<variant> <mode>" ("fp32" added where the mode runs no bf16)."""
    shape, steps = s.shape(SMALL), 5
    built = train_throughput.contenders(keys, shape.config(), s.device, shape.batch_size)
    fns = {f"{v} {m}{'' if 'bf16' in m else ' fp32'}": (train_throughput.repeated(fn, steps), n)
           for (v, m), (fn, n) in built.items()}  # fmt: skip
    return train_figures(s, section, shape, fns, steps)


def section_train_eager(s: Suite) -> None:
    figures = train_steps(s, "train-eager", [(v, "eager") for v in (*models.NAMES, "reference")])
    ratio = figures["gpt-fast eager fp32"] / figures["reference eager fp32"]
    s.add("goals", "gpt-fast eager fp32 / reference eager fp32 (goal >= 0.95)", ratio, "x")


def section_train_compiled(s: Suite) -> None:
    if not s.compile:
        return s.add("train-compiled", "compiled steps", None, "", note="skipped: --no-compile")
    keys = [(v, m) for m in ("compiled", "compiled bf16") for v in ("gpt-fast", "reference")]
    figures = train_steps(s, "train-compiled", keys)
    for label in ("fp32", "bf16"):
        ratio = figures[f"gpt-fast compiled {label}"] / figures[f"reference compiled {label}"]
        goal = " (goal >= 1.0)" if label == "bf16" else ""
        s.add("goals", f"gpt-fast compiled {label} / reference compiled {label}{goal}", ratio, "x")


def section_adamw(s: Suite) -> None:
    shape = s.shape(SMALL)
    fns = adamw_update.contenders("gpt-fast", shape.config(), s.device, shape.batch_size)
    unit = "kernels" if s.device.type == "cuda" else "aten_ops"
    ms = {}
    for r in adamw_update.measure(fns, s.device, s.rounds):
        name, ms[r["contender"]] = r["contender"], r["ms"]
        s.add("adamw", f"{name}: launches", r[unit], unit.replace("_", " "))
        s.add("adamw", f"{name}: time", r["ms"], "ms", min=r["min_ms"], max=r["max_ms"],
              rounds=s.rounds, shape=shape.label)  # fmt: skip
    for name in ("step gpt-fast fused", "step reference foreach"):
        s.add("adamw", f"{name}: host syncs", host_syncs(fns[name]), "syncs")
    ratio = ms["step reference foreach"] / ms["step gpt-fast foreach"]
    s.add("goals", "gpt-fast eager step, foreach AdamW / reference's (goal >= 0.95)", ratio, "x")


def host_syncs(fn: Callable[[], Any]) -> int:
    """Operations in one call of `fn` that make the host wait for the device (a copy from
    pageable memory, a `.item()`, a synchronize), as CUDA's sync debug mode reports them."""
    if not torch.cuda.is_available():
        return 0
    fn()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in seen if "synchroniz" in str(w.message))


def section_gpt2(s: Suite, optimizer: str) -> None:
    """optimizers' compiled step (`adamw`, or Muon with bf16 Newton-Schulz) at GPT-2 small,
    under bf16 autocast, three steps a call."""
    if not s.compile:
        return s.add(f"gpt2-{optimizer}", "compiled bf16", None, "", note="skipped: --no-compile")
    shape, steps = s.shape(GPT2), 3
    cfg = shape.config()
    contender = "adamw" if optimizer == "adamw" else "muon-bf16-ns"
    ones = optimizers.step_contenders("gpt-fast", cfg, shape.batch_size, s.device,
                                      torch.bfloat16)  # fmt: skip
    one = ones[contender]
    fn = lambda: [one(i) for i in range(steps)]  # noqa: E731
    n = matmul_params(models.get("gpt-fast").init(cfg, 0), cfg)
    t0 = time.perf_counter()
    fn()
    sync(s.device)
    s.add(f"gpt2-{optimizer}", "first call (compile + 3 steps)", time.perf_counter() - t0, "s")
    name = f"gpt-fast GPT-2 small compiled bf16, {optimizer}"
    train_figures(s, f"gpt2-{optimizer}", shape, {name: (fn, n)}, steps)
    rec = s.records[-1]
    mfu = rec["mfu_datasheet"] if rec["mfu_datasheet"] is not None else rec["mfu"]
    s.add("goals", f"{name}: MFU vs bf16 datasheet peak (goal >= 0.40)", mfu, "")
    if s.device.type == "cuda":
        s.add(f"gpt2-{optimizer}", "peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")


# ----------------------------------------------------------------------------- decode


def section_decode(s: Suite) -> None:
    """decode-throughput's contenders (gpt-fast and the reference), and the compiled step
    plain and as CUDA graphs, checked against eager decoding's tokens."""
    shape, new = s.shape(SMALL), 32 if s.tiny else 256
    preset = decode_throughput.preset(shape.dims, new)
    cfg, prompt = preset.model_config(), random_tokens((1, PROMPT), s.device, 1)
    pairs = decode_throughput.contenders(("gpt-fast", "reference"), preset, s.device,
                                         ("no cache", "cache"))  # fmt: skip
    fns = {f"{variant} {mode}": fn for (variant, mode), fn in pairs.items()}
    model = models.get("gpt-fast")
    p = params.to(model.init(cfg, 0), s.device)
    gen = lambda **kw: generate(model, p, cfg, prompt, max_new_tokens=new, temperature=0, **kw)  # noqa: E731
    eager = gen()
    if s.compile:
        fns["gpt-fast compiled cache"] = lambda: gen(
            step=build_decode_step(model, p, cfg, "compiled")
        )
        fns["gpt-fast compiled cache, CUDA graphs"] = lambda: gen(
            step=build_decode_step(model, p, cfg, "cuda-graph")
        )
        with cudagraph_skips() as skips:
            for name in ("gpt-fast compiled cache", "gpt-fast compiled cache, CUDA graphs"):
                t0 = time.perf_counter()
                same = torch.equal(fns[name](), eager)
                s.add("decode", f"{name}: first call", time.perf_counter() - t0, "s", ok=same)
                s.add("checks", f"{name} tokens == eager cache tokens", float(same), "", ok=same)
        ok = not skips.count or s.device.type != "cuda"
        note = "; ".join(skips.reasons)[:300] or None
        s.add("checks", "CUDA graph skips (0: every step replayed as a graph)", skips.count, "",
              ok=ok, note=note)  # fmt: skip
    figures = s.time_calls("decode", fns, new, "tokens/s", shape=shape.label, batch=1)
    graphs = figures.get("gpt-fast compiled cache, CUDA graphs")
    if graphs is not None:
        s.add("goals", "compiled decode / eager cache decode (goal >= 3)",
              graphs / figures["gpt-fast cache"], "x")  # fmt: skip
        s.add("goals", "compiled decode / reference no-cache decode (goal >= 2)",
              graphs / figures["reference no cache"], "x")  # fmt: skip


class CudagraphSkips(logging.Handler):
    """How many compiled graphs Inductor ran without a CUDA graph under `reduce-overhead`
    (its skip counter) and why ("skipping cudagraphs due to ...", its cudagraphs log; on
    a CPU a graph is skipped without a message)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cudagraph" in message.lower():
            self.reasons.append(message.splitlines()[0][:200])


@contextlib.contextmanager
def cudagraph_skips():
    """A `CudagraphSkips` filled while the block runs."""
    from torch._dynamo.utils import counters

    handler, logger = CudagraphSkips(), logging.getLogger("torch._inductor")
    before = counters["inductor"]["cudagraph_skips"]
    torch._logging.set_logs(cudagraphs=True)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        handler.count = counters["inductor"]["cudagraph_skips"] - before
        logger.removeHandler(handler)
        torch._logging.set_logs()


# ----------------------------------------------------------------------------- the CLI


def section_cli(s: Suite) -> None:
    import cli
    from yocto_fn.generate.batcher import Batcher
    from yocto_fn.generate.jobs import Job, Sampling
    from yocto_fn.generate.loading import encode_prompt, load_model
    from yocto_fn.generate.steps import compile_backend
    from yocto_fn.options import InferenceOptions

    root = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    dev = ["--device", s.device.type]

    def run(name: str, argv: list[str], stdin: str | None = None) -> bool:
        t0 = time.perf_counter()
        out, old_in = io.StringIO(), sys.stdin
        try:
            if stdin is not None:
                sys.stdin = io.StringIO(stdin)
            with contextlib.redirect_stdout(out):
                rc = cli.main(argv)
        except SystemExit as exc:
            rc = exc.code
        except Exception as exc:  # noqa: BLE001 - a failed command is a result here
            rc = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            sys.stdin = old_in
        ok = rc == 0
        s.add("cli", name, time.perf_counter() - t0, "s", ok=ok,
              error=None if ok else str(rc), tail=out.getvalue()[-300:])  # fmt: skip
        return ok

    data = root / "data"
    run("prepare-char (embedded corpus)", ["prepare-char", "--out-dir", str(data)])
    for amp in ("off", "on"):
        run(f"train --compile --amp {amp}", ["train", "--data-dir", str(data), "--model",
            "gpt-fast", "--ckpt-dir", str(root / f"run-{amp}"), "--compile", "--amp", amp,
            *CLI_TINY, *dev])  # fmt: skip
    ckpt = root / "run-off" / "best.pt"
    run("sample --compile", ["sample", "--ckpt", str(ckpt), "--prompt", "The ",
        "--max-new-tokens", "64", "--compile", "--stats", *dev])  # fmt: skip
    run("chat --compile", ["chat", "--ckpt", str(ckpt), "--max-new-tokens", "24", "--compile",
        *dev], stdin="Hello\nWhat is a list?\n")  # fmt: skip
    t0 = time.perf_counter()
    try:
        loaded = load_model(InferenceOptions(ckpt=ckpt, device=s.device.type))
        m, p, cfg = loaded.model, loaded.params, loaded.cfg
        b = Batcher(m, p, cfg, loaded.tok, max_batch=4, backend=compile_backend(s.device),
                    cache_dir=root / "compiled")  # fmt: skip
        b.warm_up()
        prompts = ["The ", "A list", "Truth is", "x"]
        events: list[list[Any]] = [[] for _ in prompts]
        for i, text in enumerate(prompts):
            b.submit([Job(encode_prompt(loaded, text, False), 24, Sampling(0.0), events[i].append)])
        deadline = time.monotonic() + 300
        while not all(e and e[-1].finish for e in events) and time.monotonic() < deadline:
            b.iterate()
        got = [generate(m, p, cfg, encode_prompt(loaded, t, False), max_new_tokens=24,
                        temperature=0)[0].tolist() for t in prompts]  # fmt: skip
        texts = ["".join(e.text for e in ev) for ev in events]
        want = [loaded.tok.decode(g) for g in got]
        same = all(t == w for t, w in zip(texts, want, strict=True))
        error = None if same else f"texts differ: {texts} vs {want}"[:300]
        s.add("cli", "serve's batched compiled step (4 jobs)", time.perf_counter() - t0, "s",
              ok=same, error=error)  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        s.add("cli", "serve's batched compiled step (4 jobs)", time.perf_counter() - t0, "s",
              ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])  # fmt: skip


AOT_CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import torch
from yocto_fn import models, params
from yocto_fn.core.config import ModelConfig
from yocto_fn.generate.sample import generate
from yocto_fn.generate.steps import build_decode_step
device = torch.device(sys.argv[1])
cfg = ModelConfig(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
model = models.get("gpt-fast")
p = params.to(model.init(cfg, 0), device)
where, quiet = Path(tempfile.mkdtemp()), lambda msg: None
t0 = time.perf_counter()
build_decode_step(model, p, cfg, "packaged", cache_dir=where, log=quiet)
t1 = time.perf_counter()
step = build_decode_step(model, p, cfg, "packaged", cache_dir=where, log=quiet)
t2 = time.perf_counter()
run = lambda **kw: generate(model, p, cfg, [1, 2, 3], max_new_tokens=32, temperature=0, **kw)
same = torch.equal(run(), run(step=step))
print(json.dumps({"build_s": t1 - t0, "load_s": t2 - t1, "same": same}))
"""


def section_aot(s: Suite) -> None:
    """The packaged (AOTInductor) decode step built, loaded and run in a child process, so
    that a crash in the load ends only the child."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", AOT_CHILD, s.device.type], cwd=ROOT,
                              capture_output=True, text=True, timeout=400)  # fmt: skip
    except subprocess.TimeoutExpired:
        return s.add("aot", "package build + load", time.perf_counter() - t0, "s", ok=False,
                     error="timed out after 400 s")  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
        return s.add("aot", "package build + load", wall, "s", ok=False,
                     error=f"exit {done.returncode}: {tail}")  # fmt: skip
    got = orjson.loads(done.stdout.strip().splitlines()[-1])
    s.add("aot", "package build", got["build_s"], "s")
    s.add("aot", "package load", got["load_s"], "s")
    s.add("checks", "packaged step tokens == eager tokens", float(got["same"]), "", ok=got["same"])


def section_bench(s: Suite) -> None:
    """The suite, quick, on the device: what `cli.py bench --quick` runs."""
    cfg = BenchConfig(device=(s.device.type,), quick=True, out_dir=s.out / "bench")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        written = bench_suite.run(cfg, log=lambda msg: None)
    s.add("bench", "bench --quick", time.perf_counter() - t0, "s", ok=bool(written),
          tail=out.getvalue()[-300:])  # fmt: skip


def section_env(s: Suite) -> None:
    s.add("env", "torch", None, torch.__version__, cuda=torch.version.cuda,
          device_name=device_name(s.device))  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        peak = s.peak(dtype) / 1e12
        s.add("env", f"matmul peak {str(dtype).removeprefix('torch.')}", peak, "TFLOP/s",
              datasheet=(datasheet_peak(s.device, dtype) or 0) / 1e12 or None)  # fmt: skip


RUNNERS: dict[str, Callable[[Suite], Any]] = {
    "env": section_env,
    "train-eager": section_train_eager,
    "adamw": section_adamw,
    "decode": section_decode,
    "train-compiled": section_train_compiled,
    "gpt2-adamw": lambda s: section_gpt2(s, "adamw"),
    "gpt2-muon": lambda s: section_gpt2(s, "muon"),
    "cli": section_cli,
    "aot": section_aot,
    "bench": section_bench,
}


# ----------------------------------------------------------------------------- report


def write(s: Suite, header: dict[str, Any]) -> None:
    save(s.out, {"suite.jsonl": jsonl([header, *s.records]), "suite.md": suite_md(s, header)})


def suite_md(s: Suite, header: dict[str, Any]) -> str:
    """The goals, the checks, then a table per section that recorded anything."""
    sections = {}
    for section in ("goals", "checks", *SECTIONS):
        rows = [r for r in s.records if r["section"] == section]
        if rows:
            body = [(r["name"], "–" if r["value"] is None else f"{r['value']:,.4g}", r["unit"],
                     "; ".join(notes(r))) for r in rows]  # fmt: skip
            sections[section] = table(("what", "value", "unit", "spread / note"), body, "lrll")
    title = f"GPU suite, {header['date']}: {header['device_name']}, torch {header['torch']}"
    return markdown(title, f"`{header['command']}`; medians of {s.rounds} interleaved rounds.",
                    sections)  # fmt: skip


def notes(r: dict[str, Any]) -> list[str]:
    """A record's spread, MFU and notes, as its table row shows them."""
    out = [f"{r['min']:,.4g}–{r['max']:,.4g}"] if "min" in r else []
    if r.get("mfu") is not None:
        out.append(f"MFU {r['mfu']:.1%}")
    if r.get("mfu_datasheet") is not None:
        out.append(f"datasheet MFU {r['mfu_datasheet']:.1%}")
    return out + [f"{key}: {r[key]}" for key in ("ok", "error", "note", "shape")
                  if r.get(key) is not None]  # fmt: skip


def run(cfg: Config) -> int:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --tiny for the dry run", file=sys.stderr)
        return 2
    today = dt.date.today().isoformat()
    out = cfg.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                      Path("benchmarks/results") / f"{today}-{device.type}-suite")  # fmt: skip
    start = time.perf_counter()
    s = Suite(device, cfg.tiny, cfg.rounds or (2 if cfg.tiny else 7), cfg.compile,
              start + cfg.budget_s, out)  # fmt: skip
    torch._dynamo.config.recompile_limit = 64  # many contenders compile the same functions
    header = {"date": today, "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "tiny": cfg.tiny, "rounds": s.rounds,
              "command": command("gpu-suite", cfg)}  # fmt: skip
    for name in [n for n in SECTIONS if n in cfg.sections]:
        if time.perf_counter() > s.deadline:
            s.add(name, "section", None, "", note=f"skipped: past --budget-s {cfg.budget_s:g}")
            write(s, header)
            continue
        log(f"[{time.perf_counter() - start:6.1f} s] {name}")
        t0 = time.perf_counter()
        try:
            RUNNERS[name](s)
            s.add(name, "section wall time", time.perf_counter() - t0, "s", ok=True)
        except Exception as exc:  # noqa: BLE001 - a failed section is a result; go on
            traceback.print_exc()
            s.add(name, "section wall time", time.perf_counter() - t0, "s", ok=False,
                  error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])  # fmt: skip
        write(s, header)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    failed = [r for r in s.records if r.get("ok") is False]
    log(f"done in {time.perf_counter() - start:.0f} s: {len(failed)} failed; {out / 'suite.md'}")
    return 1 if failed else 0
