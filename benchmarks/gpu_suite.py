"""The one prepared GPU run: every check and figure the CUDA work needs, in one process, in
order of priority, inside a time budget.

A GPU is lent for minutes at a time, so everything that needs one runs here, and runs
first on the CPU (`--device cpu --tiny`: the same code paths at tiny sizes) so that the GPU
run is never the first run of any of it. Each section is timed, caught and recorded: a
failure is a result (its error line is kept), not the end of the run, and sections that no
longer fit the budget are recorded as skipped, to rerun with `--sections`.

Sections, in the order they run:
    env            torch, CUDA, device; measured fp32 and bf16 matmul peaks
    train-eager    eager fp32 train steps at 6/6/384: every variant (fused AdamW), gpt-fast
                   with the `_foreach_*` AdamW, the nn.Module reference (foreach and fused)
    adamw          the update alone and the whole eager step: time and kernels launched
                   (ours against the reference: where the eager gap comes from)
    decode         batch-1 greedy decode at 6/6/384: no cache, cache, compiled, compiled as
                   CUDA graphs, and the reference without cache; tokens checked equal
    train-compiled compiled fp32 and bf16 steps of gpt-fast against the reference's
    gpt2-adamw     GPT-2 small (12/12/768, block 1024, vocab 50304), compiled bf16, AdamW:
                   tokens/s and MFU against the bf16 datasheet peak
    gpt2-muon      the same with Muon
    cli            the user's path at a tiny size: train --compile (fp32, bf16), sample
                   --compile, chat --compile and the server's batched compiled step
    aot            the packaged (AOTInductor) decode step built, loaded and run, in a child
                   process (its load once crashed the process on CUDA)
    bench          `cli.py bench --quick` on the device

    python benchmarks/gpu_suite.py --device cpu --tiny                 # the dry run
    python benchmarks/gpu_suite.py --device cuda --budget-s 300        # on the GPU
    python benchmarks/gpu_suite.py --device cuda --sections gpt2-muon cli

Writes `suite.jsonl` (a header, then one record per figure or check), `suite.md` (tables and
the goals) into `--out` (default: $OUT where that is set, else
benchmarks/results/<date>-<device>-suite/).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import adamw_update  # noqa: E402
from benchmarks.contenders import (  # noqa: E402
    adamw,
    functional_steps,
    no_cache_decode,
    random_batch,
    random_tokens,
    reference_steps,
)
from benchmarks.measure import (  # noqa: E402
    datasheet_peak,
    device_name,
    interleaved,
    measured_peak,
    sync,
    train_flops_per_token,
)
from benchmarks.presets import CLIP  # noqa: E402
from benchmarks.presets import WEIGHT_DECAY as WD  # noqa: E402
from benchmarks.reference_module import ReferenceGPT  # noqa: E402
from yocto_fn import fileio, models, optim, params  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402
from yocto_fn.core.muon import muon  # noqa: E402
from yocto_fn.generate.sample import generate  # noqa: E402
from yocto_fn.generate.steps import build_decode_step  # noqa: E402

SECTIONS = ("env", "train-eager", "adamw", "decode", "train-compiled", "gpt2-adamw",
            "gpt2-muon", "cli", "aot", "bench")  # fmt: skip


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int = 96

    def config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, block_size=self.block_size,
                           n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                           dropout=0.0)  # fmt: skip

    @property
    def label(self) -> str:
        return (f"{self.n_layer}/{self.n_head}/{self.n_embd}, block {self.block_size}, "
                f"batch {self.batch_size}, vocab {self.vocab_size}")  # fmt: skip


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

    def time_calls(self, section: str, fns: dict[str, Callable[[], Any]], per_call: int,
                   unit_per_call: float, unit: str, **extra: Any) -> dict[str, float]:  # fmt: skip
        """Median `unit`/s of each contender over interleaved rounds after one warm-up call
        each; `per_call` work units per call (tokens, steps)."""
        for fn in fns.values():
            fn()
        sync(self.device)
        seconds = interleaved(fns, self.device, self.rounds)
        rates = {}
        for name, s in seconds.items():
            rate = per_call * unit_per_call / statistics.median(s)
            spread = [per_call * unit_per_call / x for x in s]
            self.add(section, name, rate, unit, min=min(spread), max=max(spread),
                     rounds=self.rounds, **extra)  # fmt: skip
            rates[name] = rate
        return rates


def log(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- train


def batch_of(shape: Shape, device: torch.device):
    return random_batch(shape.batch_size, shape.block_size, device)


def train_figures(s: Suite, section: str, shape: Shape, fns: dict[str, Callable[[], Any]],
                  steps: int, n: int) -> dict[str, float]:  # fmt: skip
    """tokens/s of each contender, with MFU against the measured and datasheet peaks of its
    matmul dtype (bf16 for a contender named bf16, else fp32)."""
    cfg = shape.config()
    tokens = shape.batch_size * shape.block_size
    rates = s.time_calls(section, fns, steps, tokens, "tokens/s", shape=shape.label)
    flops = train_flops_per_token(n, cfg)
    for rec in s.records[-len(fns) :]:
        dtype = torch.bfloat16 if "bf16" in rec["name"] else torch.float32
        sheet = datasheet_peak(s.device, dtype)
        rec["mfu"] = flops * rec["value"] / s.peak(dtype)
        rec["mfu_datasheet"] = None if sheet is None else flops * rec["value"] / sheet
    return rates


def section_train_eager(s: Suite) -> None:
    shape = s.shape(SMALL)
    cfg, xy, steps = shape.config(), batch_of(shape, s.device), 5
    fns, n = {}, 0
    for variant in models.NAMES:
        fns[f"{variant} eager fp32"], n = functional_steps(
            variant, cfg, s.device, xy, tx=adamw(), amp=None,
            compile=False, steps=steps)  # fmt: skip
    fns["gpt-fast eager fp32, foreach AdamW"], n = functional_steps(
        "gpt-fast", cfg, s.device, xy, tx=adamw(fused=False), amp=None,
        compile=False, steps=steps)  # fmt: skip
    for fused in (False, True):
        name = f"reference eager fp32, {'fused' if fused else 'foreach'} AdamW"
        fns[name] = reference_steps(cfg, s.device, xy, fused=fused, steps=steps)
    rates = train_figures(s, "train-eager", shape, fns, steps, n)
    ref = rates["reference eager fp32, foreach AdamW"]
    for name in ("gpt-fast eager fp32", "gpt-fast eager fp32, foreach AdamW"):
        s.add("goals", f"{name} / reference eager fp32 (goal >= 0.95)", rates[name] / ref, "x")


def section_adamw(s: Suite) -> None:
    shape = s.shape(SMALL)
    cfg = shape.config()
    fns = adamw_update.update_contenders("gpt-fast", cfg, s.device)
    fns |= adamw_update.step_contenders("gpt-fast", cfg, s.device, shape.batch_size)
    unit = "kernels" if s.device.type == "cuda" else "aten ops"
    for name, fn in fns.items():
        s.add("adamw", f"{name}: launches", adamw_update.launches(fn, s.device), unit)
    seconds = interleaved(fns, s.device, s.rounds)
    for name, x in seconds.items():
        s.add("adamw", f"{name}: time", statistics.median(x) * 1e3, "ms", min=min(x) * 1e3,
              max=max(x) * 1e3, rounds=s.rounds, shape=shape.label)  # fmt: skip
    for name in ("step gpt-fast fused", "step reference foreach"):
        s.add("adamw", f"{name}: host syncs", host_syncs(fns[name]), "syncs")


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


def section_train_compiled(s: Suite) -> None:
    if not s.compile:
        return s.add("train-compiled", "compiled steps", None, "", note="skipped: --no-compile")
    shape = s.shape(SMALL)
    cfg, xy, steps = shape.config(), batch_of(shape, s.device), 5
    fns, n = {}, 0
    for amp, label in ((None, "fp32"), (torch.bfloat16, "bf16")):
        fns[f"gpt-fast compiled {label}"], n = functional_steps(
            "gpt-fast", cfg, s.device, xy, tx=adamw(), amp=amp,
            compile=True, steps=steps)  # fmt: skip
        fns[f"reference compiled {label}"] = reference_steps(
            cfg, s.device, xy, amp=amp, compile=True, fused=False, steps=steps)  # fmt: skip
    rates = train_figures(s, "train-compiled", shape, fns, steps, n)
    for label in ("fp32", "bf16"):
        ratio = rates[f"gpt-fast compiled {label}"] / rates[f"reference compiled {label}"]
        goal = " (goal >= 1.0)" if label == "bf16" else ""
        s.add("goals", f"gpt-fast compiled {label} / reference compiled {label}{goal}", ratio, "x")


def section_gpt2(s: Suite, optimizer: str) -> None:
    if not s.compile:
        return s.add(f"gpt2-{optimizer}", "compiled bf16", None, "", note="skipped: --no-compile")
    shape = s.shape(GPT2)
    cfg, xy, steps = shape.config(), batch_of(shape, s.device), 3
    tx = (
        adamw()
        if optimizer == "adamw"
        else optim.chain(
            optim.clip_by_global_norm(CLIP), muon(weight_decay=WD, ns_dtype=torch.bfloat16)
        )
    )
    fn, n = functional_steps("gpt-fast", cfg, s.device, xy, tx=tx, amp=torch.bfloat16,
                            compile=True, steps=steps)  # fmt: skip
    t0 = time.perf_counter()
    fn()
    sync(s.device)
    s.add(f"gpt2-{optimizer}", "first call (compile + 3 steps)", time.perf_counter() - t0, "s")
    name = f"gpt-fast GPT-2 small compiled bf16, {optimizer}"
    train_figures(s, f"gpt2-{optimizer}", shape, {name: fn}, steps, n)
    rec = s.records[-1]
    mfu = rec["mfu_datasheet"] if rec["mfu_datasheet"] is not None else rec["mfu"]
    s.add("goals", f"{name}: MFU vs bf16 datasheet peak (goal >= 0.40)", mfu, "")
    if s.device.type == "cuda":
        s.add(f"gpt2-{optimizer}", "peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")


# ----------------------------------------------------------------------------- decode


def section_decode(s: Suite) -> None:
    shape = s.shape(SMALL)
    cfg, new = shape.config(), 32 if s.tiny else 256
    model = models.get("gpt-fast")
    p = params.to(model.init(cfg, 0), s.device)
    prompt = random_tokens((1, 16), s.device, 1)
    gen = lambda **kw: generate(model, p, cfg, prompt, max_new_tokens=new, temperature=0, **kw)  # noqa: E731
    ref = ReferenceGPT(cfg).to(s.device).eval()
    fns = {
        "gpt-fast no cache": lambda: no_cache_decode(
            lambda q: model.forward(p, q, cfg)[0], prompt, new
        ),  # fmt: skip
        "gpt-fast cache": lambda: gen(),
        "reference no cache": lambda: no_cache_decode(ref.logits, prompt, new),
    }
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
    rates = s.time_calls("decode", fns, new, 1, "tokens/s", shape=shape.label, batch=1)
    graphs = rates.get("gpt-fast compiled cache, CUDA graphs")
    if graphs is not None:
        s.add("goals", "compiled decode / eager cache decode (goal >= 3)",
              graphs / rates["gpt-fast cache"], "x")  # fmt: skip
        s.add("goals", "compiled decode / reference no-cache decode (goal >= 2)",
              graphs / rates["reference no cache"], "x")  # fmt: skip


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
    from yocto_fn.config import InferenceOptions
    from yocto_fn.generate.batcher import Batcher
    from yocto_fn.generate.jobs import Job, Sampling
    from yocto_fn.generate.loading import encode_prompt, load_model
    from yocto_fn.generate.steps import compile_backend

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
sys.path.insert(0, sys.argv[2])
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
    """The packaged (AOTInductor) decode step built, loaded and run in a child process: on
    CUDA the load once crashed the process, so a crash here ends only the child."""
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", AOT_CHILD, s.device.type, root],
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
    import cli

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["bench", "--device", s.device.type, "--quick", "--out-dir",
                       str(s.out / "bench")])  # fmt: skip
    s.add("bench", "bench --quick", time.perf_counter() - t0, "s", ok=rc == 0,
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
    s.out.mkdir(parents=True, exist_ok=True)
    lines = b"".join(orjson.dumps(r) + b"\n" for r in [header, *s.records])
    fileio.atomic_write_bytes(s.out / "suite.jsonl", lines)
    fileio.atomic_write_bytes(s.out / "suite.md", markdown(s, header).encode())


def markdown(s: Suite, header: dict[str, Any]) -> str:
    out = [f"# GPU suite, {header['date']}: {header['device_name']}, torch {header['torch']}",
           "", f"`{header['command']}`; medians of {s.rounds} interleaved rounds.", ""]  # fmt: skip
    for section in ("goals", "checks", *SECTIONS):
        rows = [r for r in s.records if r["section"] == section]
        if not rows:
            continue
        out += [
            f"## {section}",
            "",
            "| what | value | unit | spread / note |",
            "|---|---:|---|---|",
        ]
        for r in rows:
            value = "–" if r["value"] is None else f"{r['value']:,.4g}"
            extra = []
            if "min" in r:
                extra.append(f"{r['min']:,.4g}–{r['max']:,.4g}")
            if r.get("mfu") is not None:
                extra.append(f"MFU {r['mfu']:.1%}")
            if r.get("mfu_datasheet") is not None:
                extra.append(f"datasheet MFU {r['mfu_datasheet']:.1%}")
            for key in ("ok", "error", "note", "shape"):
                if r.get(key) is not None:
                    extra.append(f"{key}: {r[key]}")
            out.append(f"| {r['name']} | {value} | {r['unit']} | {'; '.join(map(str, extra))} |")
        out.append("")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU dry run")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; tiny 2)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="start no section after this many seconds")  # fmt: skip
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled contenders")
    ap.add_argument("--out", type=Path, default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --tiny for the dry run", file=sys.stderr)
        return 2
    today = dt.date.today().isoformat()
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                       Path("benchmarks/results") / f"{today}-{device.type}-suite")  # fmt: skip
    start = time.perf_counter()
    s = Suite(device, args.tiny, args.rounds or (2 if args.tiny else 7), not args.no_compile,
              start + args.budget_s, out)  # fmt: skip
    torch._dynamo.config.recompile_limit = 64  # many contenders compile the same functions
    command = " ".join(["python benchmarks/gpu_suite.py", *(argv or sys.argv[1:])])
    header = {"date": today, "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "tiny": args.tiny, "rounds": s.rounds,
              "command": command}  # fmt: skip
    for name in [n for n in SECTIONS if n in args.sections]:
        if time.perf_counter() > s.deadline:
            s.add(name, "section", None, "", note=f"skipped: past --budget-s {args.budget_s:g}")
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


if __name__ == "__main__":
    sys.exit(main())
