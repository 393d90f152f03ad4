"""`python -m benchmarks`: every benchmark, by name.

    python -m benchmarks                      # the list, one line each
    python -m benchmarks <name> --help        # its flags
    python -m benchmarks <name> [flags]

Flags parse with tyro as the CLI's do (both spellings, `--block-size` and `--block_size`).
A mistake in the input (a missing file, a CPU without what a benchmark measures) prints one
line on stderr and exits 2; a run's own status is its exit status.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import tyro

from benchmarks import (
    adamw_update,
    against,
    amp_auto,
    chat_markers,
    chat_sft,
    checkpointing,
    compile_breakeven,
    data_parallel,
    data_prep,
    decode_throughput,
    gpu_suite,
    hvp_cost,
    masked_loss,
    optimizers,
    quality,
    recommend_goal,
    serve_load,
    train_throughput,
)
from yocto_fn.bench import run as suite
from yocto_fn.bench.presets import BenchConfig
from yocto_fn.errors import UserError


def _suite(cfg: BenchConfig) -> None:
    suite.run(cfg)


BENCHMARKS: dict[str, tuple[type, Callable[[Any], int | None]]] = {
    "suite": (BenchConfig, _suite),
    "train-throughput": (train_throughput.Config, train_throughput.run),
    "decode-throughput": (decode_throughput.Config, decode_throughput.run),
    "compile-breakeven": (compile_breakeven.Config, compile_breakeven.run),
    "checkpointing": (checkpointing.Config, checkpointing.run),
    "quality": (quality.Config, quality.run),
    "data-parallel": (data_parallel.Config, data_parallel.run),
    "data-prep": (data_prep.Config, data_prep.run),
    "amp-auto": (amp_auto.Config, amp_auto.run),
    "optimizers": (optimizers.Config, optimizers.run),
    "recommend-goal": (recommend_goal.Config, recommend_goal.run),
    "serve-load": (serve_load.Config, serve_load.run),
    "chat-sft": (chat_sft.Config, chat_sft.run),
    "chat-markers": (chat_markers.Config, chat_markers.run),
    "hvp-cost": (hvp_cost.Config, hvp_cost.run),
    "adamw-update": (adamw_update.Config, adamw_update.run),
    "against": (against.Config, against.run),
    "masked-loss": (masked_loss.Config, masked_loss.run),
    "gpu-suite": (gpu_suite.Config, gpu_suite.run),
}


def summary(cls: type) -> str:
    """A benchmark's line in the list: its config's first docstring paragraph."""
    return " ".join(inspect.getdoc(cls).split("\n\n")[0].split())


def overview() -> str:
    """What `python -m benchmarks` prints: every benchmark, one line each."""
    width = max(map(len, BENCHMARKS))
    rows = [f"  {name:<{width}}  {summary(cls)}" for name, (cls, _) in BENCHMARKS.items()]
    return "\n".join([
        "usage: python -m benchmarks <name> [flags]", "", "benchmarks:", *rows, "",
        "python -m benchmarks <name> --help lists its flags (each also takes its underscore "
        "spelling, --block_size).",
    ]) + "\n"  # fmt: skip


def parse(argv: list[str]) -> Any:
    """The config of the benchmark `argv` names, from its flags."""
    configs = {name: cls for name, (cls, _) in BENCHMARKS.items()}
    return tyro.extras.subcommand_cli_from_dict(
        configs, args=argv, prog="python -m benchmarks", config=(tyro.conf.DisallowNone,)
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print(overview(), end="")
        return 0
    cfg = parse(argv)
    try:
        status = next(fn for cls, fn in BENCHMARKS.values() if type(cfg) is cls)(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
