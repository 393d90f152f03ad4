"""One training run's host-side state, shared by `train` (trainer.py) and `sweep` (sweep.py).

A `RunState` holds what is not the pure step: the data sampler, the learning-rate schedule,
evaluation, progress, checkpoints, metrics and run_meta.json. `Trainer` drives one with the
single-model step; a sweep drives one per grid member with the ensemble step, so a member
writes exactly what `train` writes for the same flags.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .. import fileio
from ..config import TrainConfig
from ..core import models, rng
from ..core.config import ModelConfig
from ..core.params import Params, count, to
from ..core.train import Batch, loss_fn
from ..data import Dataset
from ..device import bf16_is_native
from ..errors import UserError
from ..formats import checkpoint
from ..formats import tokenizer as tokenizers
from ..options import ShapeOptions, TrainingOptions
from ..plan import probe
from . import distributed, metrics, recipe

AUTO_TIE_TOKENS = 1_000_000


def load_tokenizer(cfg: TrainingOptions, ds: Dataset) -> tokenizers.TextTokenizer:
    if ds.meta.get("mode") != cfg.mode:
        raise UserError(
            f"--mode {cfg.mode} but {cfg.data_dir} holds {ds.meta.get('mode')}-level data; "
            f"pass --mode {ds.meta.get('mode')} or another --data-dir"
        )
    path = cfg.tokenizer_path or cfg.data_dir / ds.meta["tokenizer_file"]
    tok = tokenizers.load(path)
    if tok.vocab_size != ds.meta["vocab_size"]:
        raise UserError(
            f"{path} has {tok.vocab_size} tokens but {cfg.data_dir} was encoded with "
            f"{ds.meta['vocab_size']}; use the tokenizer the data was prepared with"
        )
    return tok


def chat_record(ds: Dataset) -> dict[str, Any] | None:
    """The chat template and system prompt of chat data, as the checkpoint keeps them
    (`chat` and `serve` render with them); None for plain text."""
    if ds.chat is None:
        return None
    return {k: ds.chat[k] for k in ("template", "version", "system_prompt")}


def model_setup(
    cfg: TrainConfig, ds: Dataset, ckpt: dict[str, Any] | None
) -> tuple[str, ModelConfig]:
    """Variant and shape: the flags; on resume the checkpoint's, where a flag left at its
    default gives way to it and one set to another value is an error (as is another
    vocabulary)."""
    vocab = ds.meta["vocab_size"]
    keys = [f.name for f in fields(ShapeOptions)]
    wanted = {k: getattr(cfg, k) for k in keys} | {"model": models.canonical_name(cfg.model)}
    if ckpt is None:
        tie = cfg.tie_weights or (
            cfg.auto_tie_weights and ds.meta["train_tokens"] < AUTO_TIE_TOKENS
        )
        shape = {k: wanted[k] for k in keys if k != "model"}
        return wanted["model"], ModelConfig(
            vocab_size=vocab, dropout=cfg.dropout, tie_weights=tie, **shape
        )
    saved = ModelConfig.from_dict(ckpt["model_config"])
    name = models.canonical_name(ckpt["arch"])
    have = {k: getattr(saved, k) for k in keys if k != "model"} | {"model": name}
    default = {k: getattr(ShapeOptions, k) for k in keys}
    default["model"] = models.canonical_name(default["model"])
    clash = [f"{k} {wanted[k]} vs {have[k]}" for k in keys
             if wanted[k] not in (default[k], have[k])]  # fmt: skip
    if cfg.tie_weights and not saved.tie_weights:
        clash.append("tie_weights True vs False")
    if clash:
        raise UserError(
            f"--resume checkpoint has another architecture ({'; '.join(clash)}); drop those "
            "flags or start a new run in another --ckpt-dir"
        )
    if saved.vocab_size != vocab:
        raise UserError(
            f"--resume checkpoint has vocab {saved.vocab_size} but {cfg.data_dir} has {vocab}; "
            "resume with the data it was trained on"
        )
    return name, ModelConfig.from_dict(saved.to_dict() | {"dropout": cfg.dropout})


def choose_amp(
    spec: probe.StepSpec, device: torch.device, world: distributed.World, say: bool = True
) -> probe.AmpChoice:
    """`--amp auto` for this run's step: measured once per shape and device (then cached),
    and under torchrun rank 0's verdict for every rank, so that all run one dtype."""
    choice = probe.amp_auto(spec, device, bf16_is_native(device))
    if world.launched:
        picked = distributed.from_main(float(choice.dtype is not None), world, device)
        dtype = torch.bfloat16 if picked else None
        choice = probe.AmpChoice(dtype, choice.tokens_per_sec, choice.source)
    rates = choice.tokens_per_sec
    if say and world.main and choice.source == "measured" and rates:
        shown = ", ".join(f"{r:,.0f} {n}" if r else f"{n} trained to NaN" for n, r in rates.items())
        print(
            f"--amp auto: {choice.name} for this step (tokens/s: {shown}; measured once, "
            f"cached in {probe.cache_path()})",
            file=sys.stderr,
        )
    return choice


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass
class Progress:
    """Host-side run state saved in every checkpoint."""

    iter: int = 0
    best_val_loss: float = math.inf
    best_val_loss_raw: float = math.inf
    best_val_loss_ema: float = math.inf
    bad_evals: int = 0
    tokens_seen: int = 0
    time_sec: float = 0.0
    rows: list[metrics.Row] = field(default_factory=list)


class Interrupt:
    """Ctrl-C or SIGTERM (what schedulers, `timeout` and container stops send) finishes the
    current step, after which the loop saves and stops; a second signal ends it at once.

    Under torchrun a signal reaches each rank at its own moment, or one rank alone. A rank
    that stopped on its own would leave the others waiting in the next all-reduce, so each
    step carries every rank's `flag` in its all-reduce and all ranks stop on the result."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None

    def __enter__(self) -> Interrupt:
        self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def flag(self, device: torch.device) -> torch.Tensor:
        """This process's request for the step's all-reduce, 1.0 (stop) or 0.0, a 0-d tensor
        filled on `device` (no host-to-device copy)."""
        return torch.full((), float(self.requested is not None), device=device)


class RunState:
    """Host side of one run (see the module docstring). `ckpt` given: continue it exactly
    (params, optimizer, progress, data generator); otherwise start from `model.init(seed)`."""

    def __init__(
        self, cfg: TrainConfig, ds: Dataset, tok: tokenizers.TextTokenizer, device: torch.device,
        amp_dtype: torch.dtype | None = None, loss_scaled: bool = False,
        ckpt: dict[str, Any] | None = None, world: distributed.World = distributed.SINGLE,
    ) -> None:  # fmt: skip
        self.cfg, self.ds, self.tok, self.device, self.world = cfg, ds, tok, device, world
        self.amp_dtype, self.loss_scaled = amp_dtype, loss_scaled
        self.amp_choice: probe.AmpChoice | None = None  # what --amp auto measured
        self.arch, self.mcfg = model_setup(cfg, ds, ckpt)
        ds.check_block_size(self.mcfg.block_size)
        self.model = models.get(self.arch)
        self.params = to(self.model.init(self.mcfg, cfg.seed), device)
        self.opt_name = recipe.optimizer_choice(cfg, ckpt)
        self.tx = recipe.make_optimizer(self.opt_name, cfg, amp_dtype, loss_scaled)
        self.progress = Progress()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.ema: Params | None = None
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.opt_state = self.tx.init(self.params)
        self.micro_batch, self.accum = cfg.batch_size, cfg.grad_accum_steps
        self.base_key = rng.key(cfg.seed, device)
        self.meta_written = False

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.params, _ = checkpoint.load_matching(self.params, ckpt["params"], True, "--resume")
        template = self.tx.init(self.params)
        self.opt_state = checkpoint.opt_state_from_dict(ckpt["opt_state"], template, "--resume")
        if ckpt.get("ema") is not None:
            self.ema = to(ckpt["ema"], self.device)
        self.progress = Progress(**ckpt["progress"])
        self.progress.rows = metrics.read(self.cfg.ckpt_dir / "metrics.csv", ckpt["iter"])
        self.gen.set_state(ckpt["rng"]["data"])

    @property
    def tokens_per_step(self) -> int:
        """Over all data-parallel ranks."""
        c = self.cfg
        return c.batch_size * c.grad_accum_steps * self.world.size * self.mcfg.block_size

    def checkpoint_dict(self) -> dict[str, Any]:
        prog = self.progress
        return {
            "format": checkpoint.FORMAT,
            "arch": self.arch,
            "mode": self.cfg.mode,
            "model_config": self.mcfg.to_dict(),
            "train_config": self.cfg.to_dict(),
            "params": to(self.params, "cpu"),
            "opt_state": checkpoint.opt_state_to_dict(to(self.opt_state, "cpu"), self.opt_name),
            "ema": None if self.ema is None else to(self.ema, "cpu"),
            "iter": prog.iter,
            "best_val_loss": prog.best_val_loss,
            "rng": {"data": self.gen.get_state(), "seed": self.cfg.seed},
            "tokenizer": self.tok.to_dict(),
            "chat": chat_record(self.ds),
            "progress": {k: v for k, v in vars(prog).items() if k != "rows"},
        }

    def save(self, name: str) -> Path:
        """Written by rank 0 alone (every rank holds the same state)."""
        path = self.cfg.ckpt_dir / name
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(path, self.checkpoint_dict())
        return path

    def lr(self, it: int, end: int) -> float:
        """The --lr schedule at step `it` of a run that ends at step `end`."""
        return recipe.lr_at(self.cfg, it, end)

    def hparams(self, it: int, end: int) -> dict[str, float]:
        """The optimizer's settings at step `it`: rates, decay, momentum (`recipe.hparams_at`)."""
        return recipe.hparams_at(self.cfg, self.opt_name, it, end)

    def batch(self) -> Batch:
        """One optimizer step's rows, (x, y) or (x, y, w) as the dataset gives them; with
        accumulation every element shaped [A, B, T]."""
        parts = [self._rows("train", self.gen) for _ in range(self.accum)]
        if self.accum == 1:
            return parts[0]
        return tuple(torch.stack(t) for t in zip(*parts, strict=True))

    @torch.no_grad()
    def estimate(self, params: Params, split: str) -> float:
        """Mean loss over eval_iters batches drawn by a fixed generator: every evaluation
        sees the same batches, so successive losses compare like with like. A weighted
        batch's loss is its own weighted mean (`loss_fn`); the batches count equally."""
        gen = torch.Generator().manual_seed(self.cfg.seed + (1 if split == "train" else 2))
        total = 0.0
        for _ in range(self.cfg.eval_iters):
            total += loss_fn(
                params, self._rows(split, gen), None, model=self.model, cfg=self.mcfg,
                amp_dtype=self.amp_dtype, train=False,
            ).item()  # fmt: skip
        return distributed.mean(total / self.cfg.eval_iters, self.world, self.device)

    def _rows(self, split: str, gen: torch.Generator) -> Batch:
        """This rank's micro-batch of a global one drawn from `gen` (the whole of it alone)."""
        world, B = self.world, self.micro_batch
        rows = world.rows(B) if world.size > 1 else None
        return self.ds.get_batch(
            split, B * world.size, self.mcfg.block_size, gen, self.device, rows=rows
        )

    def evaluate(
        self, last: dict[str, float], lr: float, interval: tuple[float, int]
    ) -> metrics.Row:
        prog, d = self.progress, self.cfg.early_stopping_min_delta
        raw = self.estimate(self.params, "val")
        ema = self.estimate(self.ema, "val") if self.ema is not None else None
        val = ema if ema is not None else raw
        improved = val < prog.best_val_loss - d
        prog.best_val_loss = min(prog.best_val_loss, val)
        prog.best_val_loss_raw = min(prog.best_val_loss_raw, raw)
        if ema is not None:
            prog.best_val_loss_ema = min(prog.best_val_loss_ema, ema)
        prog.bad_evals = 0 if improved else prog.bad_evals + 1
        seconds, tokens = interval
        row: metrics.Row = {
            "iter": prog.iter, "train_loss": self.estimate(self.params, "train"),
            "val_loss": val, "val_loss_raw": raw, "val_loss_ema": ema,
            "best_val_loss": prog.best_val_loss, "best_val_loss_raw": prog.best_val_loss_raw,
            "best_val_loss_ema": prog.best_val_loss_ema if ema is not None else None,
            "lr": lr, "time_sec": prog.time_sec, "tokens_seen": prog.tokens_seen,
            "throughput_tps": tokens / seconds if seconds > 0 else None,
            "grad_norm": last["grad_norm"],
        }  # fmt: skip
        prog.rows.append(row)
        return row | {"improved": improved}

    @property
    def amp_name(self) -> str:
        """The autocast dtype as run_meta.json and the log name it: bfloat16, float16, fp32."""
        return "fp32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")

    def write_run_meta(self) -> None:
        """Written with the first evaluation, so a run that fails early changes nothing."""
        meta = {
            "train_config": self.cfg.to_dict(), "model_config": self.mcfg.to_dict(),
            "arch": self.arch, "device": str(self.device),
            "dtype": "float32" if self.amp_dtype is None else f"autocast {self.amp_name}",
            "amp": {"flag": self.cfg.amp, "autocast": self.amp_name}
            | (self.amp_choice.to_dict() if self.amp_choice else {}),
            "optimizer": recipe.optimizer_meta(self.cfg, self.opt_name, self.amp_dtype),
            "parameters": count(self.params),
            "tokens_per_step": self.tokens_per_step,
            "torch": torch.__version__, "git_commit": git_commit(),
            "data": {k: self.ds.meta.get(k) for k in ("corpus", "train_tokens", "val_tokens")}
            | {"loss_over": "all tokens" if self.ds.chat is None else "assistant tokens"},
            "resumed_from": str(self.cfg.resume) if self.cfg.resume else None,
            "world_size": self.world.size,
            "global_batch": self.cfg.batch_size * self.cfg.grad_accum_steps * self.world.size,
            "start_iter": self.progress.iter,
        }  # fmt: skip
        fileio.atomic_write_bytes(self.cfg.ckpt_dir / "run_meta.json", fileio.json_bytes(meta))

    def record(self, row: metrics.Row) -> None:
        """metrics.csv and the checkpoints of this evaluation in one all-or-nothing write: a
        full disk replaces none of them, so no row outlives the last good checkpoint (a kill
        between the renames leaves rows past it, which a resume drops)."""
        cfg = self.cfg
        if not self.world.main:
            return
        if not self.meta_written:
            cfg.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self.write_run_meta()
            self.meta_written = True
        rows = metrics.csv_bytes(self.progress.rows)
        outputs: dict[Path, fileio.Writer] = {cfg.ckpt_dir / "metrics.csv": lambda f: f.write(rows)}
        saved = checkpoint.writer(self.checkpoint_dict())
        if cfg.save_strategy in ("both", "latest", "all"):
            outputs[cfg.ckpt_dir / "latest.pt"] = saved
        if row["improved"] and cfg.save_strategy in ("both", "best", "all"):
            outputs[cfg.ckpt_dir / "best.pt"] = saved
        if cfg.save_strategy == "all":
            outputs[cfg.ckpt_dir / f"iter-{self.progress.iter}.pt"] = saved
        fileio.write_files(outputs)
        metrics.plot(cfg.ckpt_dir / "loss.png", self.progress.rows)
