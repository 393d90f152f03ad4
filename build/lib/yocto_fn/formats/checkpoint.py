"""Checkpoints: plain dicts of tensors and Python values, written atomically.

Layout (format 1): {"format", "arch", "mode", "model_config", "train_config", "params",
"opt_state", "ema" (or None), "iter", "best_val_loss", "rng", "tokenizer", "progress",
"payload_sha256"}. "opt_state" is {"optimizer": "adamw" | "muon", "layout": 2, "state":
{dotted name: tensor}, "loss_scale": {"scale", "good_steps"} or None}: the optimizer chain's
state (`optim`), flattened by `named_leaves` and rebuilt on load from a fresh `tx.init`.
Checkpoints written before the optimizers were chains of links hold layout 1: {"step",
"mu", "nu", "loss_scale"} for AdamW, {"optimizer": "muon", "step", "momentum", "adam":
{"step", "mu", "nu"}, "loss_scale"} for Muon; they load into the new layout.
Everything loads with `torch.load(weights_only=True)`; the digest of the tensors is checked on load.

`load` also reads a directory written by `cli.py export --format safetensors` (`load_dir`),
as a weights-only checkpoint. Reading that directory lives here, below `interop` (which
writes it and imports this module), so the two modules import in one direction.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import orjson
import torch
from safetensors import SafetensorError, safe_open

from .. import fileio
from ..core import models
from ..core.config import ModelConfig
from ..core.optim import LossScaleState
from ..core.params import Params, named_leaves, tree_unflatten_like
from ..errors import UserError
from . import tokenizer as tokenizers

FORMAT = 1
REQUIRED = ("format", "arch", "model_config", "params", "iter", "tokenizer")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DIR_FORMAT = 1  # the `yocto_fn` entry of an exported directory's config.json


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
        if (path / CONFIG).is_file():  # an exported (or a Hugging Face) directory
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


OPT_LAYOUT = 2
MOMENTS = ("count", "mu", "nu", "momentum")  # the state entries a layout-1 checkpoint holds


def opt_state_to_dict(state: Any, optimizer: str) -> dict[str, Any]:
    """An optimizer state (maybe loss-scaled) as plain dicts and tensors."""
    scale = None
    if isinstance(state, LossScaleState):
        state, scale = state.inner, {"scale": state.scale, "good_steps": state.good_steps}
    return {"optimizer": optimizer, "layout": OPT_LAYOUT, "state": named_leaves(state),
            "loss_scale": scale}  # fmt: skip


def optimizer_name(d: dict[str, Any]) -> str:
    """The optimizer an `opt_state_to_dict` entry belongs to (AdamW before Muon existed)."""
    return d.get("optimizer", "adamw")


def opt_state_from_dict(d: dict[str, Any], template: Any, what: str) -> Any:
    """The state `d` holds, shaped and placed like `template` (the run's `tx.init(params)`).

    The loss scale comes back where the template has one (fp16), fresh if `d` had none.
    A layout-1 entry fills the template's moments by name and keeps its hyper-parameters
    (the run sets them every step)."""
    inner = template.inner if isinstance(template, LossScaleState) else template
    names = named_leaves(inner)
    if d.get("layout") == OPT_LAYOUT:
        saved = d["state"]
        if set(saved) != set(names):
            differ = sorted(set(saved) ^ set(names))
            raise UserError(
                f"{what}: the checkpoint's optimizer state does not fit this optimizer "
                f"({len(differ)} entries differ: {', '.join(differ[:4])}); start afresh with "
                "--init-from instead"
            )
    else:
        saved = {n: t for n, t in ((n, _layout1_entry(d, n)) for n in names) if t is not None}
    leaves = [saved[n].to(t.device, t.dtype) if n in saved else t for n, t in names.items()]
    state = tree_unflatten_like(inner, leaves)
    if not isinstance(template, LossScaleState):
        return state
    scale = d.get("loss_scale")
    if scale is None:
        return template._replace(inner=state)
    device = template.scale.device
    return LossScaleState(scale["scale"].to(device), scale["good_steps"].to(device), state)


def _layout1_entry(d: dict[str, Any], name: str) -> torch.Tensor | None:
    """The layout-1 tensor behind a state entry (`1.inner.adamw.0.mu.wte`: AdamW's first
    moment of `wte`), or None for an entry that layout had not (a hyper-parameter)."""
    parts = name.split(".")
    if "hparams" in parts:
        return None
    adam = d.get("adam", d)
    if parts[-1] == "count":
        return adam["step"]
    i = next(i for i, part in enumerate(parts) if part in MOMENTS)
    source = d["momentum"] if parts[i] == "momentum" else adam[parts[i]]
    return named_leaves(source)[".".join(parts[i + 1 :])]


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


# ------------------------------------------- exported directories, as weights-only checkpoints


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds no JSON object")
    return data


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a truncated or damaged one is a UserError
    (the format checks its header and that every tensor lies inside the file)."""
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({reason})") from None


def tree_from_flat(arch: str, cfg: ModelConfig, flat: dict[str, torch.Tensor], what: str) -> Params:
    """The params tree of `arch` at `cfg` holding `flat` (dotted names), after checking that
    every name and shape is the one the model has; the template is built on the meta device,
    so the check allocates nothing."""
    with torch.device("meta"):
        tree = models.get(arch).init(cfg, 0)
    template = named_leaves(tree)
    missing = [n for n in template if n not in flat]
    extra = [n for n in flat if n not in template]
    wrong = [f"{n} {tuple(flat[n].shape)} vs {tuple(t.shape)}" for n, t in template.items()
             if n in flat and flat[n].shape != t.shape]  # fmt: skip
    problems = [f"missing {n}" for n in missing] + [f"unexpected {n}" for n in extra] + wrong
    if problems:
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise UserError(f"{what} does not fit a {arch} of its config ({shown})")
    return tree_unflatten_like(tree, [flat[n] for n in template])


def load_dir(path: Path) -> dict[str, Any]:
    """An exported `safetensors` directory as a checkpoint dict (weights only: no optimizer
    state, so it can start a run or sample, not resume one)."""
    config = read_json(path / CONFIG)
    required = ("arch", "mode", "model_config", "tokenizer_file")
    if "yocto_fn" in config and any(k not in config for k in required):
        raise UserError(
            f"{path / CONFIG} lacks {', '.join(k for k in required if k not in config)}"
        )
    if "yocto_fn" not in config:
        hint = (
            f"it is a Hugging Face model directory: make a checkpoint of it with "
            f"`python cli.py import --hf-dir {path} --out {path.name}.pt`"
            if "model_type" in config
            else "pass a directory written by `cli.py export --format safetensors`"
        )
        raise UserError(f"{path} is not an exported yocto_fn model; {hint}")
    if config["yocto_fn"] != DIR_FORMAT:
        raise UserError(f"{path} has export format {config['yocto_fn']}, expected {DIR_FORMAT}")
    arch = models.canonical_name(config["arch"])
    cfg = ModelConfig.from_dict(config["model_config"])
    tensors, meta = read_safetensors(path / WEIGHTS)
    if meta.get("sha256") not in (None, payload_digest(tensors)):
        raise UserError(
            f"{path / WEIGHTS} is damaged (its tensors fail their checksum); export again"
        )
    params = tree_from_flat(arch, cfg, tensors, str(path / WEIGHTS))
    tok = tokenizers.load(path / config["tokenizer_file"]).to_dict()
    return {
        "format": FORMAT, "arch": arch, "mode": config["mode"],
        "model_config": cfg.to_dict(), "params": params, "ema": None, "opt_state": None,
        "iter": config.get("iter", 0), "tokenizer": tok | config.get("tokenizer_specials", {}),
    }  # fmt: skip
