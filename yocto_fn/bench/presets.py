"""The benchmark suite's shapes and options, shared by `run.py`, `report.py` and the
benchmarks under `python -m benchmarks`. Light on purpose: `cli.py` reads `BenchConfig` from
here without loading the suite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from yocto_fn.core.config import ModelConfig
from yocto_fn.options import unset_means

PROMPT = 16  # decode prompt tokens
LR, WEIGHT_DECAY, CLIP, VOCAB = 3e-4, 0.1, 1.0, 96


def model_config(n_layer: int, n_head: int, n_embd: int, block_size: int,
                 vocab_size: int = VOCAB, **extra) -> ModelConfig:  # fmt: skip
    """The ModelConfig the benchmarks time: vocab VOCAB and no dropout unless told."""
    return ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd, **extra)  # fmt: skip


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
        return model_config(self.n_layer, self.n_head, self.n_embd, block_size or self.block_size)


def parse_shape(text: str) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of a shape written as the benchmarks' flags take it: "4/4/128"."""
    n_layer, n_head, n_embd = (int(v) for v in text.split("/"))
    return n_layer, n_head, n_embd


def shape_config(shape: str, block_size: int, vocab_size: int = VOCAB, **extra) -> ModelConfig:
    """`model_config` of an "L/H/C" shape."""
    return model_config(*parse_shape(shape), block_size, vocab_size, **extra)


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
        return model_config(self.n_layer, self.n_head, self.n_embd, self.block_size)

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
    device: Annotated[
        tuple[Literal["cpu", "cuda", "mps"], ...], unset_means("every available one")
    ] = ()
    """Devices to run on."""
    quick: bool = False
    """A short run (< 2 minutes on 2 CPU cores): fewer repeats and tokens, no compiled modes."""
    repeats: int = 5
    """Timed repeats per measurement (the median is reported)."""
    compile: bool = True
    """Include the compiled modes (--no-compile skips them)."""
    out_dir: Path = Path("benchmarks/results")
    """Results go to <out-dir>/<date>-<device>/."""
    only: Annotated[
        tuple[Literal["train", "decode", "ensemble", "per-example"], ...], unset_means("all")
    ] = ()
    """Run only these parts of the suite."""
