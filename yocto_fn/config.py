"""The command line's schemas: one tyro dataclass per subcommand, composed of the option
groups in `yocto_fn.options` (the model's own shape, `ModelConfig`, is the core's:
`yocto_fn.core.config`).

Field names follow the flags (`--n_layer` / `--n-layer` -> `n_layer`), so a flag, a config
field and a checkpoint entry carry the same name. Each config's `check` refuses its own bad
values when it is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .errors import UserError
from .options import (
    MODEL_CHOICES,
    CheckpointOption,
    DataOptions,
    DeviceOption,
    InferenceOptions,
    ModelName,
    Options,
    SeedOption,
    TrainingOptions,
    at_least,
    flag,
    unset_means,
    within,
)

MAX_MEMBERS = 64  # members of one sweep: more stacks past what a step handles well


@dataclass(frozen=True)
class TrainConfig(SeedOption, TrainingOptions):
    """Train a model on a prepared data directory (see `prepare-char`, `prepare-tokenizer`)."""

    ckpt_dir: Path = Path("checkpoints/run")
    """Where latest.pt, best.pt, metrics.csv, run_meta.json and loss.png go."""
    lr: float = 3e-3
    """Peak learning rate (with --optimizer muon: of the tensors AdamW trains)."""
    muon_lr: float = 0.05
    """Peak Muon rate of the block matrices (--optimizer muon), scaled by sqrt(max(1,
    rows/cols)) per matrix."""
    weight_decay: float = 0.1
    """Decoupled weight decay of >= 2-D weights (not embeddings, norms or biases), at each
    tensor's own rate."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the parameters with this decay (0 disables)."""
    resume: Annotated[Path | None, unset_means("a new run")] = None
    """Continue from this checkpoint: params, optimizer, iteration, best loss, data RNG."""
    init_from: Annotated[Path | None, unset_means("random initialisation")] = None
    """Start from this checkpoint's weights only (fresh optimizer and iteration count)."""
    strict_init: bool = True
    """With --init-from, require every tensor to match (--no-strict-init: load the matching)."""
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    """Autocast dtype of --amp: bf16 (CPU, CUDA, MPS) or fp16 with dynamic loss scaling (CUDA)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass to save activation memory (with --compile
    too: the forward is then compiled apart from the optimizer)."""
    auto_microbatch: bool = False
    """On CUDA out-of-memory, halve the micro-batch and double accumulation."""
    save_strategy: Literal["both", "best", "latest", "all", "none"] = "both"
    """Which checkpoints to write at each evaluation (all: both, plus iter-N.pt kept)."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement (0 disables)."""
    early_stopping_min_delta: float = 0.0
    """Smallest val-loss decrease that counts as an improvement."""

    def check(self) -> None:
        super().check()
        for name in ("lr", "muon_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"{flag(name)} must be positive (got {getattr(self, name)})")
        at_least(self, 0, "weight_decay", "early_stopping_patience", "early_stopping_min_delta")
        within(self, "ema_decay", 0.0, 1.0, open_high=True)
        if self.resume and self.init_from:
            raise UserError("use either --resume (continue a run) or --init-from (warm start)")


@dataclass(frozen=True)
class SweepConfig(TrainingOptions):
    """Train a grid of --lrs x --muon-lrs (with --optimizer muon) x --seeds x --weight-decays
    as one ensemble, every member in each step.

    Member i is the same run as `train` with the same flags and its grid point's learning
    rate(s), seed and weight decay: same initialisation, batches, dropout, schedule,
    evaluation and checkpoints (in --out-dir/member-XX/). Left out, because one ensemble
    step has no per-member control flow or extra state for them: --ema-decay, early
    stopping, --init-from, --save-strategy (every member writes latest.pt and best.pt),
    activation checkpointing, --auto-microbatch and --amp-dtype fp16 (--amp on is bf16).
    """

    lrs: Annotated[
        tuple[float, ...], tyro.conf.arg(help_behavior_hint="(required unless --resume)")
    ] = ()
    """Peak learning rates of the grid."""
    muon_lrs: tuple[float, ...] = (0.05,)
    """Peak Muon rates of the grid (--optimizer muon)."""
    seeds: tuple[int, ...] = (1337,)
    """Seeds of the grid (initialisation, batch sampling and dropout of a member)."""
    weight_decays: tuple[float, ...] = (0.1,)
    """Weight decays of the grid."""
    out_dir: Path = Path("sweeps/run")
    """Where sweep.json, summary.csv, val_curves.png and member-XX/ go."""
    resume: Annotated[Path | None, unset_means("a new sweep")] = None
    """Continue the sweep in this directory for --max-iters more steps (flags left at their
    defaults take the saved values; others must agree with them)."""

    def check(self) -> None:
        super().check()
        if self.resume is not None:
            return  # the saved grid decides; `sweep` checks the flags against it
        muon = self.optimizer == "muon"
        if not muon and self.muon_lrs != SweepConfig.muon_lrs:
            raise UserError("--muon-lrs sets Muon's rates: add --optimizer muon, or drop it")
        lists = {"lrs": self.lrs, "muon_lrs": self.muon_lrs, "seeds": self.seeds,
                 "weight_decays": self.weight_decays}  # fmt: skip
        for name, values in lists.items():
            if not values:
                raise UserError(f"{flag(name)} needs at least one value")
            if len(set(values)) < len(values):
                raise UserError(f"{flag(name)} lists a value twice ({' '.join(map(str, values))})")
        for name in ("lrs", "muon_lrs"):
            bad = [lr for lr in lists[name] if not lr > 0]
            if bad:
                raise UserError(f"{flag(name)} must all be positive (got {bad[0]})")
        bad_wd = [wd for wd in self.weight_decays if not wd >= 0]
        if bad_wd:
            raise UserError(f"--weight-decays must all be >= 0 (got {bad_wd[0]})")
        if not muon:
            del lists["muon_lrs"]
        n = math.prod(len(values) for values in lists.values())
        if n > MAX_MEMBERS:
            axes = " x ".join(flag(k) for k, v in lists.items() if len(v) > 1)
            raise UserError(f"the grid has {n} members ({axes}); one sweep trains at most "
                            f"{MAX_MEMBERS}: split it into several sweeps")  # fmt: skip


@dataclass(frozen=True)
class SampleConfig(InferenceOptions):
    """Generate text from a checkpoint; it streams to stdout as it is generated."""

    prompt: str = ""
    """Text to continue (\\n and \\t escapes are honoured)."""
    num_samples: int = 1
    """Independent samples, one after the other."""
    stats: bool = False
    """Print load/compile time, prefill ms, first step and steady decode tokens/s to stderr."""
    drop_unknown: bool = False
    """Char mode: drop prompt characters outside the vocabulary (warning) instead of failing."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "num_samples")


@dataclass(frozen=True)
class ChatConfig(InferenceOptions):
    """Chat with a checkpoint: `/reset` clears the history, `/exit` or end of input quits.

    Its sampling defaults are a chat's: shorter replies, a little cooler, top-k and top-p."""

    system_prompt: Annotated[str | None, unset_means("the checkpoint's", "TEXT")] = None
    """The system message that opens every context (kept when old turns are trimmed); by
    default the one the checkpoint's conversations were trained with, or none; "" for none."""
    max_new_tokens: int = 128
    """Longest reply in tokens (a reply also ends at its end of turn, <eos> or a blank line,
    or at a `User:`, `System:` or `Assistant:` line the model starts)."""
    temperature: float = 0.9
    """Softmax temperature; 0 is greedy."""
    top_k: int = 40
    """Sample from the k most likely tokens only (0 disables)."""
    top_p: float = 0.95
    """Nucleus sampling threshold (0 or 1 disables)."""


@dataclass(frozen=True)
class ServeConfig(InferenceOptions):
    """Serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page at `/`.

    The sampling flags are the defaults of requests that leave a field out (as in the
    OpenAI API: temperature 1, no top-k or top-p filter)."""

    system_prompt: Annotated[str | None, unset_means("the checkpoint's", "TEXT")] = None
    """A chat's system message when its messages have none; by default the one the
    checkpoint's conversations were trained with, or none; "" for none."""
    host: str = "127.0.0.1"
    """Address to bind (the default takes connections from this machine only)."""
    port: int = 8000
    """TCP port."""
    max_batch: int = 16
    """Rows of the shared KV cache: requests (and choices of `n`) generated at once."""
    max_queue: int = 64
    """Requests that may wait for a row; beyond it a request gets a 429."""
    prefill_chunk: int = 64
    """Prompt tokens prefilled between two decode steps (bounds the stall a long prompt
    causes the running streams)."""
    max_tokens_limit: int = 4096
    """Largest `max_tokens` a request may ask for."""
    max_body_kb: int = 256
    """Largest request body in KiB; larger ones get a 413."""
    api_key: Annotated[str | None, unset_means("no key", "KEY")] = None
    """Require `Authorization: Bearer KEY` on /v1/."""
    model_id: str = "yocto_fn"
    """The model's name in /v1/models and in replies; requests may name it or leave it out."""
    grace_s: float = 10.0
    """On SIGTERM: seconds in-flight requests get to finish before they are cut."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "max_batch", "max_queue", "prefill_chunk", "max_tokens_limit",
                 "max_body_kb")  # fmt: skip
        at_least(self, 0, "grace_s")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535 (got {self.port})")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key is empty; give a key or leave the flag out")


@dataclass(frozen=True)
class RecommendConfig(DeviceOption, DataOptions):
    """Recommend a model and a full `train` command for a prepared corpus and a device."""

    mode: Annotated[Literal["char", "token"] | None, unset_means("meta.json's")] = None
    """char or token (given, it must agree with meta.json)."""
    priority: Literal["speed", "quality"] = "speed"
    """speed: gpt-fast; quality: gpt-plus."""
    device_mem_gb: Annotated[
        float | None, unset_means("the device's total; system RAM on CPU, 8 on MPS")
    ] = None
    """Memory budget in GiB."""
    ckpt_dir: Path = Path("checkpoints/run")
    """Checkpoint directory of the suggested run."""
    time_budget: Annotated[str | None, unset_means("no budget: --priority decides")] = None
    """Wall-clock budget of the training run (90s, 5m, 1h, 1h30m): plan the lowest
    validation loss this device reaches in it (times a few candidate shapes, once)."""

    def check(self) -> None:
        super().check()
        if self.device_mem_gb is not None and not self.device_mem_gb > 0:
            raise UserError(f"--device-mem-gb must be positive (got {self.device_mem_gb})")


@dataclass(frozen=True)
class SmokeCpuConfig(DeviceOption, SeedOption):
    """Random-weight models on the default corpus's characters: sample, compare cache paths."""

    prompt: str = "Hello, world! What is a list?"
    """Prompt; normalised (NFKC) and stripped of characters the vocabulary lacks."""
    new_tokens: int = 64
    """Characters to generate per variant."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "new_tokens")


@dataclass(frozen=True)
class SmokeTrainConfig(DeviceOption, SeedOption):
    """Train a tiny model on the default corpus; check the loss falls, resume and init-from."""

    model: Annotated[ModelName, tyro.conf.arg(metavar=MODEL_CHOICES)] = "gpt-fast"
    """Variant to train."""
    iters: int = 200
    """Training steps of the first run."""
    out_dir: Annotated[Path | None, unset_means("a temporary directory, removed after")] = None
    """Keep the data and checkpoints here."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "iters")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(Options):
    """Export a checkpoint as safetensors or as a Hugging Face directory.

    safetensors keeps this project's names (sample --ckpt and train --init-from read the
    directory); hf writes a directory transformers loads: GPT-2 layout for gpt and gpt-fast,
    Llama for gpt-plus.
    """

    ckpt: Path
    """Checkpoint (latest.pt / best.pt) or an exported safetensors directory."""
    out: Path
    """Directory to write (created; files of the same names are replaced)."""
    format: Literal["safetensors", "hf"]
    """safetensors or hf."""
    ema: bool = False
    """Export the checkpoint's EMA weights (trained with --ema-decay) instead of the raw ones."""


@dataclass(frozen=True, kw_only=True)
class ImportConfig(Options):
    """Import a local Hugging Face GPT-2 or Llama directory as a checkpoint.

    GPT-2 becomes gpt, Llama gpt-plus; the checkpoint samples and warm-starts, and nothing is
    downloaded.
    """

    hf_dir: Path
    """Directory with config.json, model.safetensors or pytorch_model.bin, tokenizer.json."""
    out: Path
    """Checkpoint file to write (e.g. checkpoints/gpt2.pt)."""


@dataclass(frozen=True)
class AnalyzeConfig(DeviceOption, SeedOption, CheckpointOption):
    """Measure a checkpoint's loss surface: sharpness, Hessian trace, gradient noise scale or
    a 2-D loss landscape (JSON, and a contour plot for the landscape).

    --seed draws the batches, the Lanczos start, the trace's vectors and the directions."""

    what: Literal["sharpness", "trace", "noise-scale", "landscape"] = "sharpness"
    """sharpness: top eigenvalues; trace: Hutchinson; noise-scale: B_simple; landscape: 2-D."""
    data_dir: Annotated[Path | None, unset_means("the run's own, from the checkpoint")] = None
    """Prepared data directory to draw the batches from."""
    split: Literal["train", "val"] = "train"
    """The split whose loss is measured."""
    batches: int = 4
    """Batches the measure averages over (each a fixed draw from --seed)."""
    batch_size: Annotated[int | None, unset_means("the run's --batch-size")] = None
    """Rows (sequences of the model's block size) per batch."""
    iters: int = 20
    """sharpness: Lanczos steps (one Hessian-vector product each)."""
    eigenvalues: int = 1
    """sharpness: how many of the largest eigenvalues to report."""
    samples: int = 20
    """trace: Rademacher vectors (one Hessian-vector product each)."""
    steps: int = 21
    """landscape: grid points per axis."""
    span: float = 1.0
    """landscape: both coordinates run over [-span, span], in filter-normalised units."""
    ema: bool = False
    """Measure the checkpoint's EMA weights instead of the raw ones."""
    out: Annotated[Path | None, unset_means("analysis/ beside the checkpoint")] = None
    """Directory for WHAT-iterN.json (and WHAT-iterN.png for the landscape)."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "batches", "iters", "eigenvalues", "batch_size")
        at_least(self, 2, "samples", "steps")
        if self.what == "sharpness" and self.eigenvalues > self.iters:
            raise UserError(f"--eigenvalues {self.eigenvalues} needs at least as many --iters "
                            f"(got {self.iters})")  # fmt: skip
        if not self.span > 0:
            raise UserError(f"--span must be positive (got {self.span})")


@dataclass(frozen=True)
class CompareConfig(Options):
    """Compare configurations across seeds: each one's mean ± sd, and Welch's t-test of every
    pair (train run and sweep directories; needs the research extra).

    Runs group by their configuration without the seed, device and directory; a sweep
    directory stands for all its members."""

    paths: Annotated[
        tuple[Path, ...],
        tyro.conf.Positional,
        tyro.conf.arg(metavar="RUN_OR_SWEEP", help_behavior_hint="(two or more)"),
    ]
    """train run directories (run_meta.json, metrics.csv) and sweep directories."""
    metric: Literal["best_val_loss", "final_val_loss"] = "best_val_loss"
    """The compared value of each run: its lowest or its last val loss."""
    out: Path = Path("compare")
    """Directory for compare.json and compare.png (the val curves: mean and a ± sd band)."""
