"""This checkout against another one, in one process: a change of the core held against the
code before it (train steps, ensemble steps, decode), interleaved, as medians.

The other checkout's package is copied under the name `yocto_baseline` and imported beside
`yocto_fn`; both are driven through calls their APIs share (`plan.probe.stepper` for the
steps, `generate.sample.generate` for decoding, with each checkout's own way of choosing
the decode step), so the same script times an API change.

- step: the train step of `optimizers.py`'s contenders (AdamW, Muon; compiled, and eager
  with --eager) at the demo shape, tokens/s;
- ensemble: one ensemble step of E=8 members at 2/2/64 (batch 8, block 64) against a loop
  of 8 single-model steps, eager, tokens/s and the speed-up of each checkout;
- decode: greedy decode at batch 1 through the KV cache, eager and compiled (gpt-fast,
  --decode-shapes), new tokens/s.

    python -m benchmarks against --baseline-tree ../before --out benchmarks/results/<dir>
    python -m benchmarks against --baseline-tree ../before --parts decode --rounds 3
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

import yocto_fn
from yocto_fn.bench.report import jsonl, markdown, save, table
from yocto_fn.plan import probe

Part = Literal["step", "ensemble", "decode"]
CPU = torch.device("cpu")
STEPS = {"adamw": ("adamw", "fp32"), "muon": ("muon", "fp32")}  # name: (optimizer, NS dtype)
DEMO = ("gpt-fast", 4, 4, 128, 128, 32)  # model, L, H, C, block, batch
ENSEMBLE = ("gpt", 2, 2, 64, 64, 8, 8)  # model, L, H, C, block, batch, members


@dataclass(frozen=True)
class Config:
    """This checkout against another, in one process: train, ensemble and decode steps."""

    baseline_tree: Path
    """The other checkout."""
    parts: tuple[Part, ...] = ("step", "ensemble", "decode")
    rounds: int = 15
    eager: bool = False
    """Step: the eager steps too."""
    decode_shapes: tuple[str, ...] = ("4/4/128", "6/6/384")
    new_tokens: int = 128
    out: Path | None = None
    """A folder for results.jsonl and table.md."""


def load_baseline(tree: Path) -> ModuleType:
    """The package of checkout `tree`, copied and imported as `yocto_baseline` (its modules
    import each other relatively, so they load from the copy)."""
    root = Path(tempfile.mkdtemp(prefix="baseline-")) / "yocto_baseline"
    shutil.copytree(tree / "yocto_fn", root)
    spec = importlib.util.spec_from_file_location(
        "yocto_baseline", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["yocto_baseline"] = module
    spec.loader.exec_module(module)
    return module


def stepper(pkg: ModuleType, shape: tuple, **spec: Any) -> Callable[[int], float]:
    model, layers, heads, embd, block, batch = shape[:6]
    pr = importlib.import_module(f"{pkg.__name__}.plan.probe")
    cfg = pkg.ModelConfig(vocab_size=65, n_layer=layers, n_head=heads, n_embd=embd,
                          block_size=block, tie_weights=False)  # fmt: skip
    return pr.stepper(pr.StepSpec(model, cfg, batch, **spec), CPU, None)


def step_contenders(pkgs: dict[str, ModuleType], eager: bool) -> dict[str, Callable[[int], Any]]:
    out = {}
    for compiled in (True, False) if eager else (True,):
        for name, (opt, ns) in STEPS.items():
            for tag, pkg in pkgs.items():
                key = f"{tag} {name}{'' if compiled else ' eager'}"
                out[key] = stepper(pkg, DEMO, compile=compiled, optimizer=opt, muon_ns_dtype=ns)
    return out


def ensemble_contenders(pkgs: dict[str, ModuleType]) -> dict[str, Callable[[int], Any]]:
    members = ENSEMBLE[6]
    out = {}
    for tag, pkg in pkgs.items():
        out[f"{tag} ensemble"] = stepper(pkg, ENSEMBLE, members=members, optimizer="adamw")
        one = stepper(pkg, ENSEMBLE, optimizer="adamw")
        out[f"{tag} loop"] = lambda i, one=one: [one(i * members + e) for e in range(members)]
    return out


def decoder(pkg: ModuleType, model: Any, p: Any, cfg: Any, compiled: bool) -> Callable:
    """`generate` of `pkg` over these weights with its eager or compiled one-token step,
    called through that checkout's own API: a `generate.steps` backend where it has one,
    else `generate(compile=...)`."""
    sample = importlib.import_module(f"{pkg.__name__}.generate.sample")
    try:
        steps = importlib.import_module(f"{pkg.__name__}.generate.steps")
    except ModuleNotFoundError:
        return functools.partial(sample.generate, model, p, cfg, compile=compiled)
    step = steps.build_decode_step(model, p, cfg, "compiled" if compiled else "eager")
    return functools.partial(sample.generate, model, p, cfg, step=step)


def decode_contenders(pkgs: dict[str, ModuleType], shapes: list[str], new_tokens: int):
    out = {}
    prompt = torch.randint(65, (1, 16), generator=torch.Generator().manual_seed(1))
    for shape in shapes:
        layers, heads, embd = (int(v) for v in shape.split("/"))
        for mode, compiled in (("eager", False), ("compiled", True)):
            for tag, pkg in pkgs.items():
                cfg = pkg.ModelConfig(vocab_size=65, n_layer=layers, n_head=heads, n_embd=embd,
                                      block_size=16 + new_tokens)  # fmt: skip
                model = pkg.models.get("gpt-fast")
                gen = decoder(pkg, model, model.init(cfg, 0), cfg, compiled)
                out[f"{tag} {mode} decode {shape}"] = lambda i, g=gen: g(
                    prompt, max_new_tokens=new_tokens, temperature=0
                )
    return out


def timed_rounds(fns: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, one call each per round after two warm-up calls.

    Odd rounds run the contenders in reverse order, so that none always runs first or after
    the same neighbour: with a fixed order, this tree against an unchanged copy of itself
    came out 7-15% apart at 4/4/128 decode (1-2 ms calls).
    """
    for fn in fns.values():
        fn(0), fn(1)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in list(fns.items())[:: -1 if r % 2 else 1]:
            t0 = time.perf_counter()
            fn(2 + r)
            out[k].append(time.perf_counter() - t0)
    return out


def compared(seconds: dict[str, list[float]], work: dict[str, int]) -> list[dict]:
    """A row per contender: this checkout's tokens/s, the baseline's (medians), and time over
    baseline as the median of the per-round ratios: each round times the two side by side,
    so the ratio cancels the machine's drift between rounds."""
    rows = []
    for key in seconds:
        if not key.startswith("this "):
            continue
        name = key.removeprefix("this ")
        mine, base = seconds[f"this {name}"], seconds[f"baseline {name}"]
        ratio = statistics.median(m / b for m, b in zip(mine, base, strict=True))
        rows.append({"contender": name, "tokens/s": round(work[name] / statistics.median(mine), 1),
                     "baseline tokens/s": round(work[name] / statistics.median(base), 1),
                     "time_over_baseline": round(ratio, 3)})  # fmt: skip
    return rows


def rows_table(rows: list[dict]) -> str:
    return table(list(rows[0]), [[f"{v:,}" if isinstance(v, float) else v for v in r.values()]
                                 for r in rows], "l" + "r" * (len(rows[0]) - 1))  # fmt: skip


def step_part(pkgs: dict[str, ModuleType], cfg: Config) -> list[dict]:
    s = timed_rounds(step_contenders(pkgs, cfg.eager), cfg.rounds)
    return compared(s, {k.removeprefix("this "): DEMO[4] * DEMO[5] for k in s})


def ensemble_part(pkgs: dict[str, ModuleType], cfg: Config) -> list[dict]:
    s = timed_rounds(ensemble_contenders(pkgs), cfg.rounds)
    tokens = ENSEMBLE[4] * ENSEMBLE[5] * ENSEMBLE[6]
    rows = compared(s, dict.fromkeys(("ensemble", "loop"), tokens))
    for tag in ("this", "baseline"):
        speedup = statistics.median(s[f"{tag} loop"]) / statistics.median(s[f"{tag} ensemble"])
        rows.append({"contender": f"{tag}: ensemble speed-up over the loop",
                     "tokens/s": round(speedup, 3), "baseline tokens/s": "",
                     "time_over_baseline": ""})  # fmt: skip
    return rows


def decode_part(pkgs: dict[str, ModuleType], cfg: Config) -> list[dict]:
    s = timed_rounds(decode_contenders(pkgs, cfg.decode_shapes, cfg.new_tokens), cfg.rounds)
    return compared(s, {k.removeprefix("this "): cfg.new_tokens for k in s})


def run(cfg: Config) -> None:
    pkgs = {"this": yocto_fn, "baseline": load_baseline(cfg.baseline_tree)}
    header = (f"{probe.device_name(CPU)}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}; medians of {cfg.rounds} interleaved rounds")  # fmt: skip
    parts = {
        "step": ("Train steps, demo shape (gpt-fast 4/4/128, block 128, batch 32)", step_part),
        "ensemble": ("Ensemble step, E=8 at 2/2/64, eager, against 8 single steps",
                     ensemble_part),
        "decode": (f"Eager and compiled decode, gpt-fast, batch 1, {cfg.new_tokens} new tokens "
                   "after a 16-token prompt", decode_part),
    }  # fmt: skip
    records, sections = [], {}
    for part in cfg.parts:
        title, measure = parts[part]
        rows = measure(pkgs, cfg)
        records += [{"part": part} | r for r in rows]
        sections[title] = rows_table(rows)
    text = markdown(f"This checkout against {cfg.baseline_tree}", header, sections)
    print(text)
    if cfg.out:
        meta = {"header": header, "baseline_tree": str(cfg.baseline_tree)}
        save(cfg.out, {"results.jsonl": jsonl(meta | r for r in records), "table.md": text})
