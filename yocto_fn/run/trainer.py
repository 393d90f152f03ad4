"""The training loop behind `cli.py train`: the steps, the progress bar, Ctrl-C and logs.

The host-side state (data, resume, eval, checkpoints, metrics) is `runstate.RunState`,
which `sweep` shares; the step itself is the pure function of `train.make_train_step`.
A run is reproducible from its checkpoint: parameters, optimizer
state, iteration, best loss, the data generator's state and the seed (dropout keys are
`fold_in(key(seed), iteration)`), so N steps + resume + N steps equals 2N steps.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import fileio, jit
from ..config import TrainConfig
from ..core import rng, schedules
from ..core.params import clone, count, tree_leaves
from ..core.train import Batch, make_train_step
from ..data import Dataset
from ..device import amp_dtype as amp_dtype_of
from ..device import resolve
from ..errors import UserError
from ..formats import checkpoint
from ..plan import probe
from . import distributed, metrics, recipe
from .runstate import Interrupt, RunState, choose_amp, load_tokenizer


class Trainer(RunState):
    """One run driven by the single-model step (`train.make_train_step`)."""

    interrupt: Interrupt | None = None  # set by `run`; its flag rides each data-parallel step

    def __init__(
        self,
        cfg: TrainConfig,
        world: distributed.World = distributed.SINGLE,
        device: torch.device | None = None,
    ) -> None:
        device = device or resolve(cfg.device)
        amp_dtype = None if cfg.amp == "auto" else amp_dtype_of(cfg.amp, cfg.amp_dtype, device)
        if cfg.ckpt_dir.exists() and not cfg.ckpt_dir.is_dir():
            raise UserError(
                f"--ckpt-dir {cfg.ckpt_dir} is an existing file; choose a directory path"
            )
        ds = Dataset(cfg.data_dir)
        tok = load_tokenizer(cfg, ds)
        ckpt = checkpoint.load(cfg.resume) if cfg.resume else None
        if ckpt is not None and ckpt.get("opt_state") is None:
            raise UserError(
                f"--resume {cfg.resume} holds weights only (an export or an import), no "
                f"optimizer state; start from it with --init-from {cfg.resume}"
            )
        if ckpt is not None and ckpt["tokenizer"] != tok.to_dict():
            raise UserError(
                f"--resume {cfg.resume} was trained with another tokenizer than the one of "
                f"{cfg.data_dir} (same size, other symbols); resume on the data it was trained on"
            )
        super().__init__(cfg, ds, tok, device, amp_dtype, amp_dtype is torch.float16, ckpt, world)
        if ckpt is None and cfg.init_from:
            self._warm_start(cfg.init_from)
        if cfg.ema_decay and self.ema is None:
            self.ema = clone(self.params)
        if cfg.amp == "auto":
            spec = probe.StepSpec(
                self.arch, self.mcfg, cfg.batch_size, cfg.grad_accum_steps, compile=cfg.compile,
                activation_checkpointing=cfg.activation_checkpointing,
                optimizer=self.opt_name, muon_ns_dtype=cfg.muon_ns_dtype,
            )  # fmt: skip
            self.amp_choice = choose_amp(spec, device, world)
            self.amp_dtype = self.amp_choice.dtype
        self._build_step()

    def _warm_start(self, path: Path) -> None:
        """Weights of another run. Across vocabularies (same size, other symbols) only with
        --no-strict-init, and then without the embedding and output head, whose rows mean
        other symbols."""
        src = checkpoint.load(path)
        weights, other_vocab = src["params"], src["tokenizer"] != self.tok.to_dict()
        if other_vocab and self.cfg.strict_init:
            raise UserError(
                f"--init-from {path} was trained with another vocabulary than {self.cfg.data_dir}"
                "; pass --no-strict-init to load all but the embedding and output head"
            )
        if other_vocab:
            weights = {k: v for k, v in weights.items() if k not in ("wte", "lm_head")}
        self.params, skipped = checkpoint.load_matching(
            self.params, weights, self.cfg.strict_init, f"--init-from {path}"
        )
        if other_vocab:
            head = [f"{k} (other vocabulary)" for k in ("wte", "lm_head") if k in self.params]
            skipped = head + [s for s in skipped if s not in ("wte", "lm_head")]
        loaded = len(tree_leaves(self.params)) - len([s for s in skipped if "(unused)" not in s])
        print(f"init-from {path}: loaded {loaded} tensors", file=sys.stderr)
        if skipped:
            print(f"  skipped: {', '.join(skipped)}", file=sys.stderr)

    def _build_step(self) -> None:
        sync = partial(distributed.average, world=self.world) if self.world.launched else None
        self.tx = recipe.make_optimizer(self.opt_name, self.cfg, self.amp_dtype, self.loss_scaled)
        if self.cfg.compile:
            jit.use_safe_cxx()
        self.step = make_train_step(
            self.model, self.mcfg, self.tx, label_smoothing=self.cfg.label_smoothing,
            amp_dtype=self.amp_dtype, compile=self.cfg.compile,
            activation_checkpointing=self.cfg.activation_checkpointing, grad_sync=sync,
        )  # fmt: skip

    def train_step(self, it: int, end: int) -> dict[str, float]:
        batch, key = self.batch(), rng.fold_in(self.base_key, it)
        stop = {}
        if self.world.size > 1:  # each rank's rows get their own dropout masks
            key = rng.fold_in(key, self.world.rank)
            if self.interrupt is not None:  # so that all ranks stop after the same step
                stop["stop"] = self.interrupt.flag(self.device)
        while True:
            try:
                self.params, self.opt_state, m = self.step(
                    self.params, self.opt_state, batch, key, **stop, **self.hparams(it, end)
                )
                break
            except torch.OutOfMemoryError:
                batch = self._shrink_micro_batch(batch)
        loss, norm = m["loss"].item(), m["grad_norm"].item()
        if not math.isfinite(loss):
            raise UserError(
                f"loss became {loss} at step {it + 1}; stopped without saving, so the last "
                "good checkpoint is intact: lower --lr, raise --warmup-iters or use --grad-clip"
            )
        if self.ema is not None:
            torch._foreach_lerp_(
                tree_leaves(self.ema), tree_leaves(self.params), 1.0 - self.cfg.ema_decay
            )
        agreed = {"stop": m["stop"].item()} if "stop" in m else {}
        return {"loss": loss, "grad_norm": norm} | agreed

    def _shrink_micro_batch(self, batch: Batch) -> Batch:
        """CUDA OOM with --auto-microbatch: the same rows as twice as many, half as large,
        micro-batches; the pure step left params and optimizer state untouched."""
        if not self.cfg.auto_microbatch or self.micro_batch < 2:
            raise UserError(
                f"out of memory at micro-batch {self.micro_batch}; lower --batch-size, raise "
                "--grad-accum-steps, or use --auto-microbatch / --activation-checkpointing"
            )
        torch.cuda.empty_cache()
        self.micro_batch //= 2
        self.accum *= 2
        print(f"out of memory: micro-batch {self.micro_batch} x {self.accum}", file=sys.stderr)
        T = self.mcfg.block_size
        return tuple(t.reshape(self.accum, self.micro_batch, T) for t in batch)

    def run(self) -> dict[str, Any]:
        cfg, prog = self.cfg, self.progress
        start, end = prog.iter, prog.iter + cfg.max_iters
        tokens_per_step = self.tokens_per_step
        shown = sys.stdout.isatty() and self.world.main
        say = print if shown else (lambda *a, **k: None)
        say(
            f"{self.arch}: {count(self.params):,} parameters on {self.device} ({self.amp_name}), "
            f"steps {start}->{end}, {tokens_per_step:,} tokens/step"
        )
        bar = tqdm(total=end, initial=start, unit="step", disable=not shown,
                   dynamic_ncols=True)  # fmt: skip
        stopped, interval_t, interval_tok = None, 0.0, 0
        last = {"loss": math.nan, "grad_norm": math.nan}
        with Interrupt() as interrupt:
            self.interrupt = interrupt
            for it in range(start, end):
                if it == self.decay_start(end) and it > start:
                    self.save_pre_decay()
                t0 = time.perf_counter()
                last = self.train_step(it, end)
                dt = time.perf_counter() - t0
                prog.iter, prog.tokens_seen = it + 1, prog.tokens_seen + tokens_per_step
                prog.time_sec += dt
                interval_t, interval_tok = interval_t + dt, interval_tok + tokens_per_step
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}")
                # several ranks stop on the all-reduced flags alone, the same on every rank
                asked = last["stop"] > 0 if "stop" in last else interrupt.requested
                if asked:
                    stopped = "interrupted"
                    self.signal = interrupt.requested or "a signal to another rank"
                    break
                if prog.iter % cfg.eval_interval and prog.iter != end:
                    continue
                row = self.evaluate(last, self.lr(it, end), (interval_t, interval_tok))
                interval_t, interval_tok = 0.0, 0
                self._after_eval(row, bar)
                if cfg.early_stopping_patience and prog.bad_evals >= cfg.early_stopping_patience:
                    stopped = f"early stopping: no improvement in {prog.bad_evals} evaluations"
                    break
            if start == end:
                self._after_eval(self.evaluate(last, self.lr(start, end), (0.0, 0)), bar)
        bar.close()
        if stopped == "interrupted" and self.world.main:
            path = self.save("latest.pt")
            print(f"interrupted ({self.signal}) at step {prog.iter}; saved {path}")
            print(f"resume with: python cli.py train --mode {cfg.mode} --data-dir {cfg.data_dir} "
                  f"--ckpt-dir {cfg.ckpt_dir} --resume {path}")  # fmt: skip
        elif stopped and self.world.main:
            print(stopped)
        return {"iter": prog.iter, "best_val_loss": prog.best_val_loss, "last_loss": last["loss"],
                "stopped": stopped, "main": self.world.main}  # fmt: skip

    def decay_start(self, end: int) -> int | None:
        """The first decaying step of a wsd run that ends at `end` (None: another schedule)."""
        c = self.cfg
        if c.schedule != "wsd":
            return None
        return schedules.wsd_decay_start(c.warmup_iters, end, c.decay_fraction)

    def save_pre_decay(self) -> None:
        """`pre_decay.pt`: the run as it stands before its first decay step. Resumed with a
        larger --max-iters it extends the run: the stable phase goes on and the decay moves
        to the new end, as if the longer run had been asked for from the start."""
        if self.cfg.save_strategy != "none":
            self.save("pre_decay.pt")

    def _after_eval(self, row: metrics.Row, bar: tqdm) -> None:
        self.record(row)
        if not self.world.main:
            return
        msg = (
            f"step {row['iter']}: train {row['train_loss']:.4f}, val {row['val_loss']:.4f}"
            f" (best {row['best_val_loss']:.4f}), lr {row['lr']:.2e}"
        )
        if sys.stdout.isatty():
            bar.write(msg)
        else:
            print(msg, flush=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """One run; under torchrun one rank of a data-parallel run (see `distributed`)."""
    world = distributed.from_env()
    try:
        trainer = Trainer(cfg, world, distributed.start(world, cfg.device))
        if not world.main:
            return trainer.run()
        with fileio.exclusive(cfg.ckpt_dir, "training run"):
            return trainer.run()
    finally:
        distributed.stop(world)
