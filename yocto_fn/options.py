"""The option groups the command line's schemas are made of, and the way they check
themselves.

Options several commands share are small groups (`DeviceOption`, `SeedOption`,
`DataOptions`, `ShapeOptions`, `SamplingOptions`, `CheckpointOption`, and the larger
`TrainingOptions` and `InferenceOptions` built of them) that a command's config
(`yocto_fn.config`) inherits; tyro flattens inherited fields into one flag list, so
`--device` is declared once and reads the same everywhere.

Every schema checks its own values when it is built (`Options.check`, run from
`__post_init__`), whether the CLI or a caller builds it: a bad value is one `UserError`
before anything is read or written. Checks that need a file (a checkpoint, the data) stay
with the code that opens it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from .errors import UserError

ModelName = Literal["gpt", "gpt-plus", "gpt-fast", "gpt_plus", "gpt_fast"]
MODEL_CHOICES = "{gpt,gpt-plus,gpt-fast}"  # the help's spelling: the underscore ones work too
Device = Literal["auto", "cpu", "cuda", "mps"]


def unset_means(meaning: str, metavar: str | None = None) -> Any:
    """tyro metadata of a flag whose None stands for something no value can say (the
    checkpoint's, a new run): its help says `(default: meaning)`, not `(default: None)`."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {meaning})")


def flag(name: str) -> str:
    """A field's flag, as errors name it: `n_layer` -> `--n-layer`."""
    return "--" + name.replace("_", "-")


def at_least(cfg: object, low: int, *names: str) -> None:
    """Refuse any of the named fields below `low` (a None field is unset, and passes)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < low:
            bound = ">= 0" if low == 0 else f"at least {low}"
            raise UserError(f"{flag(name)} must be {bound} (got {value:g})")


def within(cfg: object, name: str, low: float, high: float, *, open_high: bool = False) -> None:
    """Refuse a field outside [low, high], or [low, high) with `open_high`."""
    value = getattr(cfg, name)
    if not (low <= value < high if open_high else low <= value <= high):
        shown = f"[{low:g}, {high:g}{')' if open_high else ']'}"
        raise UserError(f"{flag(name)} must be in {shown} (got {value:g})")


class Options:
    """Base of every schema: `check` runs once the dataclass is built. Each class's `check`
    refuses its own fields and calls `super().check()`, so a config composed of groups checks
    all of them in one pass."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values no run could use (UserError, naming the flag and its fix)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DeviceOption(Options):
    device: Device = "auto"
    """auto picks cuda > mps > cpu."""


@dataclass(frozen=True)
class SeedOption(Options):
    seed: int = 1337
    """Seed of the command's random draws (initialisation, batches, dropout, sampling): the
    same seed repeats the result."""


@dataclass(frozen=True)
class DataOptions(Options):
    data_dir: Path = Path("data/char")
    """Prepared data directory (train.bin, val.bin, meta.json)."""
    tokenizer_path: Annotated[Path | None, unset_means("the one in --data-dir")] = None
    """vocab.json / tokenizer.json."""


@dataclass(frozen=True)
class ShapeOptions(Options):
    """The model's variant and shape. On --resume a flag left at its default takes the
    checkpoint's value; one set to another value than the checkpoint's is refused."""

    model: Annotated[ModelName, tyro.conf.arg(metavar=MODEL_CHOICES)] = "gpt"
    """Variant (--model-type is the same flag)."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 128
    """Embedding width."""
    block_size: int = 128
    """Context length in tokens."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "n_layer", "n_head", "n_embd", "block_size")


@dataclass(frozen=True)
class SamplingOptions(Options):
    max_new_tokens: int = 200
    """Tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely token (greedy)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 disables)."""
    top_p: float = 0.0
    """Nucleus sampling: the smallest set of tokens reaching probability p (0 or 1 disables)."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "max_new_tokens")
        at_least(self, 0, "temperature", "top_k")
        within(self, "top_p", 0.0, 1.0)


@dataclass(frozen=True)
class TrainingOptions(DeviceOption, ShapeOptions, DataOptions):
    """What `train` and `sweep` share: data, shape, batch, schedule, evaluation and device."""

    mode: Literal["char", "token"] = "char"
    """char or token; must match the prepared data."""
    batch_size: int = 32
    """Sequences per micro-batch (the global batch is batch_size * grad_accum_steps)."""
    max_iters: int = 1000
    """Optimizer steps to run (on --resume: additional steps; 0: evaluate and save only)."""
    dropout: float = 0.0
    """Dropout probability (0.1-0.3 against overfitting on small corpora)."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss."""
    tie_weights: bool = False
    """Share the token embedding and the LM head."""
    auto_tie_weights: bool = False
    """Tie the weights when the training split has fewer than 1M tokens."""
    # muon: the sweeps of docs/benchmarks.md (benchmarks/results/2026-12-02-cpu-recipe)
    optimizer: Literal["adamw", "muon"] = "muon"
    """adamw trains every tensor with AdamW at --lr; muon trains the block matrices with Muon
    at --muon-lr and the embeddings, head, norms and biases with AdamW at --lr (on --resume
    the default means the checkpoint's)."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum."""
    muon_ns_dtype: Literal["fp32", "bf16", "auto"] = "fp32"
    """Precision of Muon's Newton-Schulz iterations; auto = bf16 when the step autocasts to
    bf16 (faster, and a little higher loss: docs/benchmarks.md)."""
    schedule: Literal["constant", "cosine", "wsd"] = "cosine"
    """Learning-rate schedule: constant; cosine (linear warmup, cosine decay to --min-lr);
    wsd (warmup, stable, then a linear decay to --min-lr over the last --decay-fraction)."""
    cosine_lr: bool = False
    """Same as --schedule cosine."""
    warmup_iters: int = 100
    """Linear warmup steps of cosine and wsd."""
    min_lr: float = 1e-4
    """Final learning rate of cosine and wsd (Muon's falls in the same proportion)."""
    decay_fraction: float = 0.2
    """wsd: the fraction of the run, at its end, over which the rate decays."""
    grad_clip: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    eval_interval: int = 100
    """Evaluate, log and checkpoint every this many steps (and at the end)."""
    eval_iters: int = 20
    """Batches per split in each evaluation."""
    amp: Literal["auto", "on", "off"] = "auto"
    """Autocast the forward: auto = the faster of fp32 and bf16 for this run, timed once and
    cached (fp32 where bf16 is not native); on = --amp-dtype; off = fp32. A bare --amp means
    on, --no-amp off."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    compile: bool = False
    """torch.compile the whole train step (forward, backward and optimizer)."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "batch_size", "eval_interval", "eval_iters", "grad_accum_steps")
        at_least(self, 0, "max_iters", "warmup_iters", "grad_clip")
        within(self, "dropout", 0.0, 1.0, open_high=True)
        within(self, "label_smoothing", 0.0, 1.0, open_high=True)
        within(self, "muon_momentum", 0.0, 1.0, open_high=True)
        if self.cosine_lr and self.schedule != "cosine":
            raise UserError(f"--cosine-lr means --schedule cosine, not {self.schedule}: drop one")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise UserError(f"--decay-fraction must be in (0, 1] (got {self.decay_fraction})")


@dataclass(frozen=True)
class CheckpointOption(Options):
    ckpt: Path
    """Checkpoint (latest.pt / best.pt); it holds the architecture and the tokenizer."""


@dataclass(frozen=True)
class InferenceOptions(DeviceOption, SeedOption, SamplingOptions, CheckpointOption):
    """What sampling, chat and serving share: the checkpoint, its overrides and the sampling
    knobs."""

    mode: Annotated[Literal["char", "token"] | None, unset_means("the checkpoint's")] = None
    """char or token (given, it must agree with the checkpoint)."""
    vocab_path: Annotated[Path | None, unset_means("the checkpoint's")] = None
    """Override the checkpoint's character vocabulary (vocab.json)."""
    tokenizer_path: Annotated[Path | None, unset_means("the checkpoint's")] = None
    """Override the checkpoint's tokenizer (tokenizer.json)."""
    compile: bool = False
    """Compile the one-token decode step; on CPU/CUDA the package is kept beside the checkpoint."""
    ema: bool = False
    """Use the checkpoint's EMA weights (trained with --ema-decay) instead of the raw ones."""
    quantize: Literal["none", "int8", "bf16"] = "none"
    """Decode with int8 weights (per-row scales) or bf16 weights and cache."""
