"""Checkpoints: plain dicts of tensors and Python values, written atomically.

Layout (format 1): {"format", "arch", "mode", "model_config", "train_config", "params",
"opt_state": {"step", "mu", "nu", "loss_scale"}, "ema" (or None), "iter", "best_val_loss", "rng",
"tokenizer", "progress", "payload_sha256"}. Everything loads with
`torch.load(weights_only=True)`; the digest of the tensors is checked on load.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import fileio
from .errors import UserError
from .optim import LossScale, OptState, ScaledState
from .params import Params, named_leaves, tree_unflatten_like

FORMAT = 1
REQUIRED = ("format", "arch", "model_config", "params", "iter", "tokenizer")


def payload_digest(ckpt: dict[str, Any]) -> str:
    """sha256 over every tensor of the checkpoint (name, dtype, shape and bytes), in key
    order: torch's zip format keeps no checksum a loader verifies, so a flipped bit in a
    tensor would otherwise load as silently wrong weights."""
    digest = hashlib.sha256()

    def walk(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{name}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{name}.{i}", item)

    walk("", {k: v for k, v in ckpt.items() if k != "payload_sha256"})
    return digest.hexdigest()


def writer(ckpt: dict[str, Any]) -> fileio.Writer:
    """A `fileio` writer of `ckpt` with the digest of its tensors, so a checkpoint can be
    written in one all-or-nothing batch with other files (metrics.csv)."""
    ckpt = ckpt | {"payload_sha256": payload_digest(ckpt)}
    return lambda f: torch.save(ckpt, f)


def save(path: Path, ckpt: dict[str, Any]) -> None:
    """Write `ckpt` to `path` via a temporary file, fsync and rename: a crash mid-write
    leaves the previous checkpoint intact."""
    fileio.write_files({path: writer(ckpt)})


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint (or an exported safetensors directory, as a
    weights-only checkpoint); a missing, corrupt or foreign file is a UserError."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():  # an exported (or a Hugging Face) directory
            from .interop import load_dir

            return load_dir(path)
        raise UserError(
            f"{path} is a directory; pass the latest.pt or best.pt inside it (or a directory "
            "written by `cli.py export --format safetensors`)"
        )
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is truncated or not a checkpoint (not a whole zip archive, which torch.save "
            "writes); pass the latest.pt or best.pt of a training run"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise UserError(f"checkpoint {path} is corrupt ({e}); use another checkpoint") from None
        raise UserError(
            f"{path} holds Python objects besides tensors and plain values, so it is not a "
            "yocto_fn checkpoint and is not unpickled (that could run code)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({reason}); use another checkpoint "
            "(e.g. best.pt or latest.pt of the run) or start afresh"
        ) from None
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a yocto_fn checkpoint (missing {', '.join(missing)})")
    if ckpt["format"] != FORMAT:
        raise UserError(f"{path} has checkpoint format {ckpt['format']}, expected {FORMAT}")
    if "payload_sha256" in ckpt and payload_digest(ckpt) != ckpt["payload_sha256"]:
        others = [p.name for p in (path.with_name("best.pt"), path.with_name("latest.pt"))
                  if p.is_file() and p != path]  # fmt: skip
        instead = f"use {' or '.join(others)} beside it" if others else "start afresh"
        raise UserError(
            f"checkpoint {path} is damaged (its tensors fail their checksum); {instead}"
        )
    return ckpt


def opt_state_to_dict(state: OptState | ScaledState) -> dict[str, Any]:
    scale = None
    if isinstance(state, ScaledState):
        state, scale = state.inner, state.loss_scale._asdict()
    return {"step": state.step, "mu": state.mu, "nu": state.nu, "loss_scale": scale}


def opt_state_from_dict(d: dict[str, Any]) -> OptState | ScaledState:
    state = OptState(d["step"], d["mu"], d["nu"])
    scale = d.get("loss_scale")
    return state if scale is None else ScaledState(state, LossScale(**scale))


def load_matching(
    target: Params, source: Params, strict: bool, what: str
) -> tuple[Params, list[str]]:
    """Copy `source` tensors into a tree shaped like `target`, by dotted name.

    strict: every name and shape must match, else a UserError lists the differences.
    Otherwise tensors that are missing or differ in shape keep `target`'s values; their
    names are returned so the caller can report them.
    """
    src = named_leaves(source)
    dst = named_leaves(target)
    skipped = [
        name
        for name, t in dst.items()
        if name not in src or tuple(src[name].shape) != tuple(t.shape)
    ]
    unused = [name for name in src if name not in dst]
    if strict and (skipped or unused):
        shown = ", ".join((skipped + unused)[:6])
        raise UserError(
            f"{what} does not match this model ({len(skipped) + len(unused)} tensors differ: "
            f"{shown}); pass --no-strict-init to load only the matching ones"
        )
    leaves = [
        t if name in skipped else src[name].to(device=t.device, dtype=t.dtype)
        for name, t in dst.items()
    ]
    return tree_unflatten_like(target, leaves), skipped + [f"{n} (unused)" for n in unused]
