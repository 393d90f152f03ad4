"""The benchmark suite: every variant and the nn.Module reference on every available device.

Measures train tokens/s (eager, compiled, bf16 autocast) with MFU and peak memory, decode
tokens/s at batch 1 (no cache, cache, compiled cache), prefill latency of a long prompt, an
ensemble of E models trained in one `make_ensemble_step` against E sequential
`make_train_step` calls (eager and compiled, at the `ENSEMBLE_CASES` shapes), and
per-example gradients against a loop of one-sequence gradients and one batch gradient. Every
figure is the median of repeats after warm-up, with the min-max spread; contenders are timed
in interleaved rounds so that machine noise hits them alike.

Writes `benchmarks/results/<date>-<device>/`: `results.jsonl` (one record per measurement),
`table.md` and `chart.png`.

    python benchmarks/run.py --quick              # < 2 minutes on 2 CPU cores, no compile
    python benchmarks/run.py --preset small       # or: python cli.py bench --preset small
    python cli.py bench --only ensemble per-example

FLOPs (the PaLM / nanoGPT convention; biases, norms and softmax are not counted):
    N = weights that multiply activations: every >= 2-D leaf except the `wte`/`wpe` lookup
        tables, plus the V x C output head when it is tied to `wte`;
    forward FLOPs per token at context t = 2 N + 4 L C t (QK^T and attention x V, the full
    t x t product as the kernels compute it); a training token costs 3x the forward:
    6 N + 12 L C T. MFU = FLOPs per token x tokens/s / peak FLOP/s, with the peak measured
    in the same run by a large matmul in the same dtype (and, on CUDA, the datasheet peak).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_module import ReferenceGPT, make_optimizer  # noqa: E402
from benchmarks.reference_module import train_step as reference_step  # noqa: E402
from yocto_fn import ensemble, models, optim, params  # noqa: E402
from yocto_fn.config import ModelConfig  # noqa: E402
from yocto_fn.device import autocast  # noqa: E402
from yocto_fn.sample import decode_step, generate  # noqa: E402
from yocto_fn.train import grad_and_value, loss_fn, make_train_step  # noqa: E402

VARIANTS = (*models.NAMES, "reference")
PROMPT = 16  # decode prompt tokens
LR, WEIGHT_DECAY, CLIP, VOCAB = 3e-4, 0.1, 1.0, 96
# Dense datasheet peaks (FLOP/s) by device-name fragment: (bf16 tensor core, fp32).
DATASHEET = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12),
             "L4": (121e12, 30e12), "A10G": (70e12, 31e12), "T4": (65e12, 8.1e12)}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    new_tokens: int = 256
    prompt_tokens: int = 512

    def model_config(self, block_size: int | None = None) -> ModelConfig:
        return ModelConfig(
            vocab_size=VOCAB, block_size=block_size or self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=0.0,
        )  # fmt: skip


PRESETS = {"tiny": Preset(4, 4, 128, 128, 32), "small": Preset(6, 6, 384, 256, 16)}


@dataclass(frozen=True)
class EnsembleCase:
    """A shape for the ensemble and per-example benchmarks: E members, each trained on its
    own batch of `batch_size` x `block_size` tokens."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    members: int

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=VOCAB, block_size=self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=0.0,
        )  # fmt: skip

    @property
    def label(self) -> str:
        return (f"{self.n_layer}/{self.n_head}/{self.n_embd}, block {self.block_size}, "
                f"batch {self.batch_size}, E={self.members}")  # fmt: skip


# A typical small sweep, and a larger shape where batching has less overhead to win back.
ENSEMBLE_CASES = (EnsembleCase(2, 2, 64, 64, 8, 8), EnsembleCase(4, 4, 128, 128, 8, 4))
PER_EXAMPLE_CASE = EnsembleCase(2, 2, 64, 64, 16, 1)
PARTS = ("train", "decode", "ensemble", "per-example")


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark every variant on every available device; write JSON lines, table and chart."""

    preset: Literal["tiny", "small"] = "tiny"
    """tiny: 4 layers/4 heads/128 dim, block 128, batch 32; small: 6/6/384, block 256, batch 16."""
    device: tuple[Literal["cpu", "cuda", "mps"], ...] = ()
    """Devices to run on (default: every available one)."""
    quick: bool = False
    """A short run (< 2 minutes on 2 CPU cores): fewer repeats and tokens, no compiled modes."""
    repeats: int = 5
    """Timed repeats per measurement (the median is reported)."""
    compile: bool = True
    """Include the compiled modes (--no-compile skips them)."""
    out_dir: Path = Path("benchmarks/results")
    """Results go to <out-dir>/<date>-<device>/."""
    only: tuple[Literal["train", "decode", "ensemble", "per-example"], ...] = ()
    """Run only these parts of the suite (default: all)."""


# ----------------------------------------------------------------------------- FLOPs, peaks


def matmul_params(p: params.Params, cfg: ModelConfig) -> int:
    """N of the module docstring: weights that multiply activations."""
    named = params.named_leaves(p)
    n = sum(t.numel() for k, t in named.items() if t.dim() >= 2 and k not in ("wte", "wpe"))
    return n + (cfg.vocab_size * cfg.n_embd if cfg.tie_weights else 0)


def forward_flops_per_token(n: int, cfg: ModelConfig, context: int) -> int:
    return 2 * n + 4 * cfg.n_layer * cfg.n_embd * context


def train_flops_per_token(n: int, cfg: ModelConfig) -> int:
    return 3 * forward_flops_per_token(n, cfg, cfg.block_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def measured_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device` (median of repeats)."""
    n = 1024 if quick else (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = statistics.median(timed(lambda: a @ b, device, 2, 5))
    return 2 * n**3 / seconds


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, fp32) in DATASHEET.items():
        if fragment in name:
            return bf16 if dtype == torch.bfloat16 else fp32
    return None


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or on CPU the rise of the process's peak
    resident set (VmHWM, whose mark Linux resets through /proc/self/clear_refs).

    On CPU, glibc keeps freed blocks for reuse and raises its mmap threshold as it goes, so
    a later contender would reuse an earlier one's memory and show no rise; a fixed 64 KiB
    threshold (`mallopt`) makes every large tensor its own mapping, returned on free.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, None
        if device.type == "cpu":
            _fix_mmap_threshold()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu" and _reset_rss_peak():
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.device.type == "cpu" and hasattr(self, "base"):
            self.mb = max(0, _status_kb("VmHWM") * 1024 - self.base) / 2**20


@functools.cache
def _fix_mmap_threshold() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------------- contenders


def random_tokens(shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def train_runner(
    variant: str, cfg: ModelConfig, device: torch.device, batch_size: int, mode: str
) -> tuple[Callable[[], Any], int]:
    """A zero-argument train step of `variant` in `mode` (eager/compiled/bf16), and N."""
    data = random_tokens((batch_size, cfg.block_size + 1), device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    amp = torch.bfloat16 if mode == "bf16" else None
    if variant == "reference":
        module = ReferenceGPT(cfg).to(device)
        opt = make_optimizer(module, LR, WEIGHT_DECAY)
        fn = torch.compile(module) if mode == "compiled" else module
        n = sum(p.numel() for k, p in module.named_parameters() if p.dim() >= 2 and "wte" not in k
                and "wpe" not in k)  # fmt: skip

        def ref_step() -> None:
            with autocast(device.type, amp):
                reference_step(fn, opt, x, y, CLIP)

        return ref_step, n
    model = models.get(variant)
    state = {"p": params.to(model.init(cfg, 0), device)}
    state["opt"] = optim.init(state["p"])
    step = make_train_step(
        model, cfg, optim.AdamW(weight_decay=WEIGHT_DECAY), grad_clip=CLIP, amp_dtype=amp,
        compile=mode == "compiled",
    )  # fmt: skip

    def fn_step() -> None:
        state["p"], state["opt"], _ = step(state["p"], state["opt"], (x, y), LR, None)

    return fn_step, matmul_params(state["p"], cfg)


@torch.no_grad()
def no_cache_decode(logits_fn: Callable[[torch.Tensor], torch.Tensor], prompt, n: int) -> None:
    """Greedy decoding with a full forward over the whole sequence per token."""
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, logits_fn(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)


def decode_runners(
    variant: str, cfg: ModelConfig, device: torch.device, preset: Preset, modes: list[str]
) -> dict[str, Callable[[], Any]]:
    """Decode (batch 1, 16-token prompt, `new_tokens`) and prefill (`prompt_tokens`) calls."""
    prompt = random_tokens((1, PROMPT), device, 1)
    long_prompt = random_tokens((1, preset.prompt_tokens), device, 2)
    n = preset.new_tokens
    if variant == "reference":
        module = ReferenceGPT(cfg).to(device).eval()
        return {
            "no cache": lambda: no_cache_decode(module.logits, prompt, n),
            "prefill": torch.no_grad()(lambda: module.logits(long_prompt)),
        }
    model = models.get(variant)
    p = params.to(model.init(cfg, 0), device)
    fwd = lambda seq: model.forward(p, seq, cfg)[0]  # noqa: E731
    gen = lambda compile: generate(  # noqa: E731
        model, p, cfg, prompt, max_new_tokens=n, temperature=0, compile=compile
    )
    cache = model.init_cache(cfg, 1, device=device)
    prefill = torch.no_grad()(lambda: decode_step(model, False)(p, long_prompt, cfg, cache))
    out = {"no cache": lambda: no_cache_decode(fwd, prompt, n), "cache": lambda: gen(False)}
    if "compiled cache" in modes:
        out["compiled cache"] = lambda: gen(True)
    return out | {"prefill": prefill}


def ensemble_runners(
    variant: str, case: EnsembleCase, device: torch.device, compile: bool
) -> dict[str, Callable[[], Any]]:
    """One `make_ensemble_step` over E members against E `make_train_step` calls: the same
    members, data rows and learning rates (one per member, as in a sweep)."""
    model, cfg, E = models.get(variant), case.model_config(), case.members
    hp = optim.AdamW(weight_decay=WEIGHT_DECAY)
    data = random_tokens((E, case.batch_size, cfg.block_size + 1), device)
    x, y = data[..., :-1].contiguous(), data[..., 1:].contiguous()
    lrs = torch.linspace(LR, LR / 4, E, device=device)
    ens = ensemble.make_ensemble_step(model, cfg, hp, grad_clip=CLIP, compile=compile)
    one = make_train_step(model, cfg, hp, grad_clip=CLIP, compile=compile)
    stacked = {"p": ensemble.ensemble_init(model, cfg, range(E), device)}
    stacked["opt"] = ensemble.opt_init(stacked["p"])
    members = [params.to(model.init(cfg, i), device) for i in range(E)]
    states = [optim.init(p) for p in members]

    def ensemble_step() -> None:
        stacked["p"], stacked["opt"], _ = ens(stacked["p"], stacked["opt"], (x, y), lrs, None)

    def loop() -> None:
        for i in range(E):
            members[i], states[i], _ = one(members[i], states[i], (x[i], y[i]), lrs[i], None)

    mode = "compiled" if compile else "eager"
    return {f"{mode} ensemble": ensemble_step, f"{mode} loop": loop}


def per_example_runners(
    variant: str, case: EnsembleCase, device: torch.device
) -> dict[str, Callable[[], Any]]:
    """Per-example gradients of a batch (`ensemble.per_example_grads`), a loop of one-row
    gradients, and the single batch gradient (what per-example costs on top of training)."""
    model, cfg = models.get(variant), case.model_config()
    p = params.to(model.init(cfg, 0), device)
    data = random_tokens((case.batch_size, cfg.block_size + 1), device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    per_example = ensemble.per_example_grads(model, cfg)
    grad = grad_and_value(functools.partial(loss_fn, model=model, cfg=cfg, train=False))
    return {
        "per-example": lambda: per_example(p, (x, y)),
        "loop": lambda: [grad(p, (x[b : b + 1], y[b : b + 1]), None) for b in range(len(x))],
        "batch gradient": lambda: grad(p, (x, y), None),
    }


# ----------------------------------------------------------------------------- records

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "benchmark": str, "variant": str, "device": str, "device_name": str, "dtype": str,
    "mode": str, "preset": str, "metric": str, "value": float, "unit": str, "min": float,
    "max": float, "repeats": int, "torch": str, "date": str,
}  # fmt: skip
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "mfu": float, "mfu_datasheet": float, "peak_mem_mb": float, "flops_per_token": int,
    "peak_flops": float, "tokens": int, "config": dict,
}  # fmt: skip
BENCHMARKS = {"train", "decode", "prefill", "ensemble", "per-example"}


def validate(record: dict[str, Any]) -> None:
    """Raise ValueError unless `record` follows the results.jsonl schema."""
    for key, kind in REQUIRED.items():
        if key not in record:
            raise ValueError(f"record lacks {key!r}: {record}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ValueError(f"{key!r} should be {kind}, got {record[key]!r}")
    for key, value in record.items():
        if key not in REQUIRED and key not in OPTIONAL:
            raise ValueError(f"unknown field {key!r}")
        if key in OPTIONAL and value is not None and not isinstance(value, OPTIONAL[key]):
            raise ValueError(f"{key!r} should be {OPTIONAL[key]}, got {value!r}")
    if record["benchmark"] not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {record['benchmark']!r}")
    if not record["min"] <= record["value"] <= record["max"]:
        raise ValueError(f"value outside its spread: {record}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def record(
    benchmark: str, variant: str, device: torch.device, mode: str, preset: str,
    metric: str, values: list[float], unit: str, dtype: str = "float32", **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    rec = {
        "benchmark": benchmark, "variant": variant, "device": device.type,
        "device_name": device_name(device), "dtype": dtype, "mode": mode, "preset": preset,
        "metric": metric, "value": float(statistics.median(values)), "unit": unit,
        "min": float(min(values)), "max": float(max(values)), "repeats": len(values),
        "torch": torch.__version__, "date": dt.date.today().isoformat(),
    } | {k: v for k, v in extra.items() if v is not None}  # fmt: skip
    validate(rec)
    return rec


# ----------------------------------------------------------------------------- the suite


def bench_device(cfg: BenchConfig, device: torch.device, log: Callable[[str], None]):
    """Every measurement of the suite (or of `cfg.only`) on one device, as validated records."""
    preset = PRESETS[cfg.preset]
    if cfg.quick:
        preset = replace(preset, new_tokens=32, prompt_tokens=128, batch_size=8)
    repeats = 3 if cfg.quick else cfg.repeats
    with_compile = cfg.compile and not cfg.quick
    compiled = ["compiled"] if with_compile else []
    parts = cfg.only or PARTS
    ctx = (cfg.preset, preset, repeats, log)
    records = []
    if "train" in parts:
        peaks = {t: measured_peak(device, t, cfg.quick) for t in (torch.float32, torch.bfloat16)}
        records += bench_train(device, ["eager", *compiled, "bf16"], peaks, ctx)
    if "decode" in parts:
        records += bench_decode(device, ["no cache", "cache", *[f"{c} cache" for c in compiled]],
                                ctx)  # fmt: skip
    if "ensemble" in parts:
        cases = ENSEMBLE_CASES[:1] if cfg.quick else ENSEMBLE_CASES
        records += bench_ensemble(device, ["eager", *compiled], ctx, cases)
    if "per-example" in parts:
        records += bench_per_example(device, ctx, PER_EXAMPLE_CASE)
    return records


def _first_call(fn: Callable[[], Any], log: Callable[[str], None], what: str) -> None:
    t0 = time.perf_counter()
    fn()
    log(f"{what}: first call {time.perf_counter() - t0:.1f} s")


def interleaved(
    fns: dict[Any, Callable[[], Any]], device: torch.device, repeats: int
) -> dict[Any, list[float]]:
    """Seconds per call, one call of each contender per round: machine noise (large on a
    shared host) then hits every contender alike instead of whichever ran during a slow
    spell."""
    out: dict[Any, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            out[key] += timed(fn, device, 0, 1)
    return out


def bench_train(device, modes, peaks, ctx) -> list[dict[str, Any]]:
    name, preset, repeats, log = ctx
    mcfg, out = preset.model_config(), []
    tokens = preset.batch_size * mcfg.block_size
    runners, sizes, memory = {}, {}, {}
    for variant in VARIANTS:
        for mode in modes:
            fn, sizes[(variant, mode)] = train_runner(
                variant, mcfg, device, preset.batch_size, mode
            )
            _first_call(fn, log, f"{device.type} train {variant} {mode}")
            with PeakMemory(device) as mem:
                fn()
            runners[(variant, mode)], memory[(variant, mode)] = fn, mem.mb
    for (variant, mode), seconds in interleaved(runners, device, repeats).items():
        rates = [tokens / s for s in seconds]
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        fpt = train_flops_per_token(sizes[(variant, mode)], mcfg)
        sheet, achieved = datasheet_peak(device, dtype), fpt * statistics.median(rates)
        out.append(record(
            "train", variant, device, mode, name, "throughput", rates, "tokens/s",
            dtype=str(dtype).removeprefix("torch."), mfu=achieved / peaks[dtype],
            mfu_datasheet=achieved / sheet if sheet else None,
            peak_mem_mb=memory[(variant, mode)], flops_per_token=fpt, peak_flops=peaks[dtype],
            tokens=tokens, config=mcfg.to_dict() | {"batch_size": preset.batch_size},
        ))  # fmt: skip
    return out


def bench_decode(device, modes, ctx) -> list[dict[str, Any]]:
    """Decode and prefill use a block_size that holds the long prompt and the new tokens, so
    no mode has to slide its window."""
    name, preset, repeats, log = ctx
    block = max(preset.block_size, preset.prompt_tokens, PROMPT + preset.new_tokens)
    dcfg, out = preset.model_config(block_size=block), []
    runners = {}
    for variant in VARIANTS:
        for mode, fn in decode_runners(variant, dcfg, device, preset, modes).items():
            _first_call(fn, log, f"{device.type} decode {variant} {mode}")
            runners[(variant, mode)] = fn
    for (variant, mode), seconds in interleaved(runners, device, repeats).items():
        if mode == "prefill":
            ms = [s * 1000 for s in seconds]
            out.append(record("prefill", variant, device, mode, name, "latency", ms, "ms",
                              tokens=preset.prompt_tokens))  # fmt: skip
        else:
            rates = [preset.new_tokens / s for s in seconds]
            out.append(record("decode", variant, device, mode, name, "throughput", rates,
                              "tokens/s", tokens=preset.new_tokens))  # fmt: skip
    return out


def bench_ensemble(device, modes, ctx, cases) -> list[dict[str, Any]]:
    """Ensemble step against the loop, per case and mode; each case is timed on its own
    (interleaved within the case) so that a compiled graph of one shape never waits on
    another's."""
    name, _, repeats, log = ctx
    out = []
    for case in cases:
        tokens = case.members * case.batch_size * case.block_size
        runners = {}
        for variant in models.NAMES:
            for mode in modes:
                for label, fn in ensemble_runners(
                    variant, case, device, mode == "compiled"
                ).items():
                    _first_call(fn, log, f"{device.type} ensemble {case.label} {variant} {label}")
                    runners[(variant, label)] = fn
        for (variant, label), seconds in interleaved(runners, device, repeats).items():
            out.append(record(
                "ensemble", variant, device, label, name, "throughput",
                [tokens / s for s in seconds], "tokens/s", tokens=tokens,
                config=vars(case) | {"case": case.label},
            ))  # fmt: skip
    return out


def bench_per_example(device, ctx, case) -> list[dict[str, Any]]:
    name, _, repeats, log = ctx
    tokens = case.batch_size * case.block_size
    runners = {}
    for variant in models.NAMES:
        for label, fn in per_example_runners(variant, case, device).items():
            _first_call(fn, log, f"{device.type} per-example {variant} {label}")
            runners[(variant, label)] = fn
    return [
        record(
            "per-example",
            variant,
            device,
            label,
            name,
            "throughput",
            [tokens / s for s in seconds],
            "tokens/s",
            tokens=tokens,
            config=vars(case) | {"case": case.label},
        )  # fmt: skip
        for (variant, label), seconds in interleaved(runners, device, repeats).items()
    ]


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        out.append("mps")
    return out


def run(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> list[Path]:
    """Run the suite; returns the result directories written."""
    from benchmarks.report import write_report
    from yocto_fn.device import resolve

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    written = []
    for name in cfg.device or available_devices():
        device = resolve(name)
        records = bench_device(cfg, device, log)
        out = cfg.out_dir / f"{dt.date.today().isoformat()}-{device.type}"
        write_report(out, records, cfg)
        print((out / "table.md").read_text())
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> None:
    import tyro

    run(tyro.cli(BenchConfig, args=argv))


if __name__ == "__main__":
    main()
