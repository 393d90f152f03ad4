"""`cli.py sweep`: a grid of learning rates (and Muon rates) x seeds x weight decays trained
as one ensemble.

Every grid point is a member: a `RunState` built exactly as `train` builds it for
`--lr lr_i [--muon-lr m_i] --seed seed_i --weight-decay wd_i` (same initialisation, data
generator, dropout keys, schedule, evaluation and checkpoints, in OUT/member-XX/). So a
member's files are what `train` would write, and `train --resume OUT/member-XX/latest.pt`
continues it alone. Only the step differs: all members move in one
`ensemble.make_ensemble_step` call, their params and optimizer states stacked on a leading
member axis; a member's slice is copied out only to evaluate or save it, so the ensemble
is held once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import torch
from tqdm import tqdm

from .. import fileio, jit
from ..config import SweepConfig, TrainConfig
from ..core import rng
from ..core.config import ModelConfig
from ..core.ensemble import make_ensemble_step
from ..core.params import count, stack, tree_map
from ..data import Dataset
from ..device import amp_dtype as amp_dtype_of
from ..device import resolve
from ..errors import UserError
from ..formats import checkpoint
from ..options import TrainingOptions
from ..plan import probe, recommend
from . import distributed
from .runstate import Interrupt, RunState, choose_amp, load_tokenizer, model_setup
from .sweep_report import GridPoint, plot_val_curves, point_label, summary, table, write_summary

SWEEP_FILE = "sweep.json"
FREE_ON_RESUME = frozenset({"max_iters", "resume", "out_dir", "device", "compile"})


def make_grid(cfg: SweepConfig) -> list[GridPoint]:
    """--lrs x (--muon-lrs with --optimizer muon) x --seeds x --weight-decays, in that order
    (`SweepConfig.check` has refused a grid that cannot run)."""
    muon = cfg.optimizer == "muon"
    muon_lrs = cfg.muon_lrs if muon else (None,)
    product = itertools.product(cfg.lrs, muon_lrs, cfg.seeds, cfg.weight_decays)
    return [
        {"lr": lr} | ({"muon_lr": mlr} if muon else {}) | {"seed": seed, "weight_decay": wd}
        for lr, mlr, seed, wd in product
    ]


def member_dir(out_dir: Path, i: int) -> Path:
    return out_dir / f"member-{i:02d}"


def member_config(cfg: SweepConfig, i: int, point: GridPoint) -> TrainConfig:
    """The `train` flags of member i: the shared ones, its grid point and its own directory."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingOptions)}
    ckpt_dir = member_dir(cfg.out_dir, i)
    return TrainConfig(
        **shared, ckpt_dir=ckpt_dir, lr=point["lr"], seed=point["seed"],
        muon_lr=point.get("muon_lr", TrainConfig.muon_lr), weight_decay=point["weight_decay"],
        resume=ckpt_dir / "latest.pt" if cfg.resume else None,
    )  # fmt: skip


def check_memory(arch: str, mcfg: ModelConfig, batch: int, members: int, device) -> None:
    """Refuse a grid whose members together pass the device budget by `recommend`'s estimate
    (the vmapped step holds every member's weights, optimizer state and activations)."""
    n = recommend.estimate_params(arch, mcfg.n_layer, mcfg.n_embd, mcfg.vocab_size,
                                  mcfg.block_size, mcfg.tie_weights)  # fmt: skip
    one = recommend.estimate_memory(n, mcfg.n_layer, mcfg.n_head, mcfg.n_embd, mcfg.block_size,
                                    batch, mcfg.vocab_size, ema=False)  # fmt: skip
    budget = recommend.device_memory_gb(device)
    if one * members > budget * 2**30:
        raise UserError(
            f"{members} members of {n:,} parameters need about {one * members / 2**30:.1f} GiB "
            f"(recommend's estimate), more than the {budget:.1f} GiB of {device.type}: use "
            "fewer members, a smaller --batch-size or a smaller model"
        )


def _plain(value: Any) -> Any:
    """A value as sweep.json stores it (tuples as lists, paths as strings)."""
    return orjson.loads(orjson.dumps(value, default=str))


def _typed(f: dataclasses.Field, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return Path(value) if value is not None and "Path" in str(f.type) else value


def resumed_config(cfg: SweepConfig, saved: dict[str, Any]) -> SweepConfig:
    """The saved sweep's flags with this call's --max-iters, --device and --compile.

    Flags left at their defaults take the saved values; a flag given with another value than
    the saved one is an error (the members would no longer be the runs they started as)."""
    given = cfg.to_dict()
    values, clash = {}, []
    for f in dataclasses.fields(SweepConfig):
        if f.name in FREE_ON_RESUME:
            continue
        was, now = saved["config"].get(f.name), _plain(given[f.name])
        if now not in (_plain(f.default), was):
            clash.append(f"--{f.name.replace('_', '-')} {now} vs {was}")
        if was is not None or f.default is None:  # a saved None stands for the default
            values[f.name] = _typed(f, was)
    if cfg.out_dir not in (SweepConfig.out_dir, cfg.resume):
        clash.append(f"--out-dir {cfg.out_dir} vs {cfg.resume}")
    if clash:
        raise UserError(
            f"--resume {cfg.resume}: flags contradict the saved sweep ({'; '.join(clash)}); "
            "drop them or start a new sweep in another --out-dir"
        )
    return dataclasses.replace(cfg, **values, out_dir=cfg.resume)


def load_saved(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"--resume {out_dir}: no {SWEEP_FILE} there, so it holds no sweep")
    return orjson.loads(path.read_bytes())


def sweep_plan(cfg: SweepConfig) -> tuple[SweepConfig, list[GridPoint]]:
    """The effective flags and the grid: the saved ones on --resume, else checked new ones
    for an --out-dir that holds no sweep yet (so nothing is ever overwritten)."""
    if cfg.resume is not None:
        saved = load_saved(cfg.resume)
        return resumed_config(cfg, saved), saved["grid"]
    grid = make_grid(cfg)
    if (cfg.out_dir / SWEEP_FILE).exists():
        raise UserError(
            f"--out-dir {cfg.out_dir} already holds a sweep; continue it with "
            f"--resume {cfg.out_dir} or choose another --out-dir"
        )
    if cfg.out_dir.exists() and not cfg.out_dir.is_dir():
        raise UserError(f"--out-dir {cfg.out_dir} is an existing file")
    return cfg, grid


def resume_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    return checkpoint.load(cfg.resume) if cfg.resume else None


class Sweep:
    """The members' `RunState`s around one stacked ensemble and its step."""

    def __init__(self, cfg: SweepConfig) -> None:
        if distributed.from_env().launched:
            raise UserError("sweep runs in one process; start it without torchrun")
        cfg, grid = sweep_plan(cfg)
        self.cfg, self.grid = cfg, grid
        configs = [member_config(cfg, i, point) for i, point in enumerate(grid)]
        self.device = resolve(cfg.device)
        ds = Dataset(cfg.data_dir)
        tok = load_tokenizer(cfg, ds)
        first = resume_checkpoint(configs[0])
        arch, mcfg = model_setup(configs[0], ds, first)
        ds.check_block_size(mcfg.block_size)
        check_memory(arch, mcfg, cfg.batch_size, len(grid), self.device)
        choice = None
        if cfg.amp == "auto":
            spec = probe.StepSpec(arch, mcfg, cfg.batch_size, cfg.grad_accum_steps,
                                  members=len(grid), compile=cfg.compile,
                                  optimizer=cfg.optimizer,
                                  muon_ns_dtype=cfg.muon_ns_dtype)  # fmt: skip
            choice = choose_amp(spec, self.device, distributed.SINGLE)
        amp_dtype = choice.dtype if choice else amp_dtype_of(cfg.amp, "bf16", self.device)
        self.members = [RunState(configs[0], ds, tok, self.device, amp_dtype, ckpt=first)] + [
            RunState(c, ds, tok, self.device, amp_dtype, ckpt=resume_checkpoint(c))
            for c in configs[1:]
        ]
        for m in self.members:
            m.amp_choice = choice
        if len({m.progress.iter for m in self.members}) > 1:
            raise UserError(f"--resume {cfg.resume}: the members' latest.pt are at different "
                            "steps; resume them one by one with `train --resume`")  # fmt: skip
        self.n_params = count(self.members[0].params)
        self.params = stack([m.params for m in self.members])
        self.opt_state = stack([m.opt_state for m in self.members])
        for m in self.members:
            m.params = m.opt_state = None  # the stacked ensemble holds them (see `member`)
        if cfg.compile:
            jit.use_safe_cxx()
        # The members' optimizers differ only in the values their states hold (rates, decay).
        self.step = make_ensemble_step(
            self.members[0].model, mcfg, self.members[0].tx, label_smoothing=cfg.label_smoothing,
            amp_dtype=amp_dtype, compile=cfg.compile,
        )  # fmt: skip

    @contextlib.contextmanager
    def member(self, i: int) -> Iterator[RunState]:
        """Member i holding its own copy of its params and optimizer state while in use (a
        copy, so that a checkpoint holds one member, not the whole stacked storage)."""
        m = self.members[i]
        m.params = tree_map(lambda t: t[i].clone(), self.params)
        m.opt_state = tree_map(lambda t: t[i].clone(), self.opt_state)
        try:
            yield m
        finally:
            m.params = m.opt_state = None

    def train_step(self, it: int, end: int) -> list[dict[str, float]]:
        """One ensemble step: each member's batch, dropout key and learning rate as `train`
        would draw them at step `it`."""
        batches = [m.batch() for m in self.members]
        # (x, y) or (x, y, w), each element stacked over the members: [E, ...]
        batch = tuple(torch.stack(parts) for parts in zip(*batches, strict=True))
        keys = torch.stack([rng.fold_in(m.base_key, it) for m in self.members])
        self.params, self.opt_state, out = self.step(
            self.params, self.opt_state, batch, keys, **self.hparams(it, end)
        )
        losses, norms = out["loss"].tolist(), out["grad_norm"].tolist()
        for i, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise UserError(
                    f"member-{i:02d} ({point_label(self.grid[i])}): loss became {loss} at step "
                    f"{it + 1}; stopped without saving, so the last good checkpoints are "
                    "intact: drop that grid value, raise --warmup-iters or use --grad-clip"
                )
        return [{"loss": a, "grad_norm": b} for a, b in zip(losses, norms, strict=True)]

    def hparams(self, it: int, end: int) -> dict[str, torch.Tensor]:
        """Each member's optimizer settings at step `it` (rates, decay), as [E] tensors."""
        rows = [m.hparams(it, end) for m in self.members]
        return {k: torch.tensor([r[k] for r in rows], device=self.device) for k in rows[0]}

    def write_sweep_file(self) -> None:
        self.cfg.out_dir.mkdir(parents=True, exist_ok=True)
        sweep = {"grid": self.grid, "config": _plain(self.cfg.to_dict())}
        fileio.atomic_write_bytes(self.cfg.out_dir / SWEEP_FILE, fileio.json_bytes(sweep))

    def evaluate(self, last: list[dict[str, float]], lr_iter: int, end: int,
                 interval: tuple[float, int]) -> str:  # fmt: skip
        """Evaluate and record every member as `train` does; the log line names the best."""
        self.write_sweep_file()
        for i in range(len(self.members)):
            with self.member(i) as m:
                m.record(m.evaluate(last[i], m.lr(lr_iter, end), interval))
        out = self.cfg.out_dir
        write_summary(out / "summary.csv", summary(self.grid, self.members))
        plot_val_curves(out / "val_curves.png", self.grid, self.members)
        latest = [m.progress.rows[-1] for m in self.members]
        i = min(range(len(latest)), key=lambda i: latest[i]["val_loss"])
        p, row = self.grid[i], latest[i]
        best = f"best member-{i:02d} ({point_label(p)})"
        return f"step {row['iter']}: {best} val {row['val_loss']:.4f}"

    def save_latest(self) -> None:
        self.write_sweep_file()
        for i in range(len(self.members)):
            with self.member(i) as m:
                m.save("latest.pt")

    def run(self) -> list[dict[str, Any]]:
        cfg, members = self.cfg, self.members
        start = members[0].progress.iter
        end = start + cfg.max_iters
        step_tokens = members[0].tokens_per_step
        tty = sys.stdout.isatty()
        if tty:
            print(
                f"{members[0].arch}: {len(members)} members x {self.n_params:,} parameters "
                f"on {self.device}, steps {start}->{end}, {step_tokens:,} tokens/step each"
            )
        bar = tqdm(total=end, initial=start, unit="step", disable=not tty, dynamic_ncols=True)
        log = bar.write if tty else lambda msg: print(msg, flush=True)
        stopped, interval_t, interval_tok = False, 0.0, 0
        last = [{"loss": math.nan, "grad_norm": math.nan}] * len(members)
        with Interrupt() as interrupt:
            for it in range(start, end):
                t0 = time.perf_counter()
                last = self.train_step(it, end)
                dt = time.perf_counter() - t0
                for m in members:
                    m.progress.iter, m.progress.time_sec = it + 1, m.progress.time_sec + dt
                    m.progress.tokens_seen += step_tokens
                interval_t, interval_tok = interval_t + dt, interval_tok + step_tokens
                bar.update(1)
                bar.set_postfix(loss=f"{min(r['loss'] for r in last):.4f}",
                                tok_s=f"{len(members) * step_tokens / dt:,.0f}")  # fmt: skip
                if interrupt.requested:
                    stopped = True
                    break
                if (it + 1) % cfg.eval_interval and it + 1 != end:
                    continue
                log(self.evaluate(last, it, end, (interval_t, interval_tok)))
                interval_t, interval_tok = 0.0, 0
            if start == end:
                log(self.evaluate(last, start, end, (0.0, 0)))
        bar.close()
        rows = summary(self.grid, members)
        if stopped:
            self.save_latest()
            write_summary(cfg.out_dir / "summary.csv", rows)
        print(table(rows))
        if stopped:
            print(f"interrupted at step {members[0].progress.iter}; saved every latest.pt")
            print(f"resume with: python cli.py sweep --resume {cfg.out_dir}")
        return rows


def sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One sweep; its directory is locked while it runs, as `train` locks --ckpt-dir."""
    run = Sweep(cfg)
    with fileio.exclusive(run.cfg.out_dir, "sweep"):
        return run.run()
