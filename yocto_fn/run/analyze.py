"""`cli.py analyze`: one `yocto_fn.analysis` measure of a checkpoint, written as JSON (and,
for the landscape, a contour plot) with the provenance needed to reproduce it.

The batches come from the run's own data directory (named in the checkpoint) unless
--data-dir gives another, drawn by a generator seeded with --seed, so two analyses of two
checkpoints of one run measure the same rows.
"""

from __future__ import annotations

import datetime
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import fileio
from ..config import AnalyzeConfig
from ..core import analysis, models
from ..core.config import ModelConfig
from ..core.ensemble import per_example_grads
from ..core.params import Params, count, to
from ..data import Dataset
from ..device import resolve
from ..errors import UserError
from ..formats import checkpoint
from .runstate import git_commit


def data_dir_of(cfg: AnalyzeConfig, ckpt: dict[str, Any]) -> Path:
    if cfg.data_dir is not None:
        return cfg.data_dir
    saved = (ckpt.get("train_config") or {}).get("data_dir")
    if saved is None:
        raise UserError(f"{cfg.ckpt} names no data directory (not a training checkpoint); "
                        "pass --data-dir")  # fmt: skip
    return Path(saved)


def draw_batches(cfg: AnalyzeConfig, ds: Dataset, mcfg: ModelConfig, rows: int, device):
    gen = torch.Generator().manual_seed(cfg.seed)
    ds.check_block_size(mcfg.block_size)
    return [ds.get_batch(cfg.split, rows, mcfg.block_size, gen, device)
            for _ in range(cfg.batches)]  # fmt: skip


def weights(cfg: AnalyzeConfig, ckpt: dict[str, Any], device: torch.device) -> Params:
    if not cfg.ema:
        return to(ckpt["params"], device)
    if ckpt.get("ema") is None:
        raise UserError(f"{cfg.ckpt} has no EMA weights (train with --ema-decay); drop --ema")
    return to(ckpt["ema"], device)


def _bar(total: int, what: str) -> tqdm:
    return tqdm(total=total, desc=what, unit="step", disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)  # fmt: skip


def measure(cfg: AnalyzeConfig, model, mcfg, params, batches) -> tuple[dict[str, Any], str]:
    """The measure's JSON fields and the line that reports it."""
    loss = analysis.make_loss(model, mcfg)
    tick = lambda bar: lambda _i: bar.update(1)  # noqa: E731
    if cfg.what == "sharpness":
        with _bar(cfg.iters, "Lanczos") as bar:
            e = analysis.top_eigenvalues(loss, params, batches, cfg.eigenvalues, cfg.iters,
                                         cfg.seed, tick(bar))  # fmt: skip
        shown = ", ".join(f"{v:.4g}" for v in e.values)
        return e._asdict(), (
            f"top Hessian eigenvalue{'s' if len(e.values) > 1 else ''} {shown} (Lanczos, "
            f"{e.iters} steps, error bound {max(e.residuals):.2g}; smallest Ritz value "
            f"{e.smallest:.4g})"
        )
    if cfg.what == "trace":
        with _bar(cfg.samples, "Hutchinson") as bar:
            t = analysis.hessian_trace(loss, params, batches, cfg.samples, cfg.seed, tick(bar))
        return t._asdict(), (
            f"Hessian trace {t.estimate:.4g} ± {t.stderr:.2g} (standard error; Hutchinson, "
            f"{t.samples} Rademacher samples)"
        )
    if cfg.what == "noise-scale":
        return noise_scale(cfg, model, mcfg, params, batches)
    with _bar(cfg.steps, "landscape rows") as bar:
        scape = analysis.loss_landscape(loss, params, batches, cfg.steps, cfg.span, cfg.seed,
                                        progress=tick(bar))  # fmt: skip
    flat = [v for row in scape.losses for v in row]
    return scape._asdict(), (
        f"loss landscape {cfg.steps}x{cfg.steps} over [-{cfg.span:g}, {cfg.span:g}]^2 along two "
        f"filter-normalised directions: {scape.center:.4f} at the weights, "
        f"{min(flat):.4f} to {max(flat):.4f} across the slice"
    )


def noise_scale(cfg: AnalyzeConfig, model, mcfg, params, batches) -> tuple[dict[str, Any], str]:
    rows_fn = per_example_grads(model, mcfg)
    with _bar(len(batches), "per-example gradients") as bar:

        def per_example(p, b):
            grads = rows_fn(p, b)
            bar.update(1)
            return grads

        n = analysis.gradient_noise_scale(per_example, params, batches)
    tokens = n.simple * mcfg.block_size
    fields = n._asdict() | {"simple_tokens": tokens, "block_size": mcfg.block_size}
    if n.grad_sq <= 0:
        return fields, (
            f"gradient noise scale: the noise swamps the gradient on {n.batches} batches of "
            f"{n.rows} rows (|G|^2 estimate {n.grad_sq:.3g}); measure more --batches"
        )
    return fields, (
        f"gradient noise scale B_simple = {n.simple:,.1f} sequences ({tokens:,.0f} tokens) "
        f"per batch; tr(Sigma) {n.trace_cov:.4g}{_pm(n.trace_cov_stderr)}, |G|^2 "
        f"{n.grad_sq:.4g}{_pm(n.grad_sq_stderr)} (standard errors over the batches)"
    )


def _pm(stderr: float) -> str:
    return "" if math.isnan(stderr) else f" ± {stderr:.2g}"


def plot_landscape(path: Path, scape: dict[str, Any]) -> None:
    """Filled contours of the slice, the weights marked at the centre (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    filled = ax.contourf(scape["alphas"], scape["betas"], torch.tensor(scape["losses"]).T,
                         levels=30, cmap="viridis")  # fmt: skip
    ax.contour(scape["alphas"], scape["betas"], torch.tensor(scape["losses"]).T, levels=10,
               colors="white", linewidths=0.5, alpha=0.6)  # fmt: skip
    ax.plot([0], [0], marker="x", color="red")
    fig.colorbar(filled, ax=ax, label="loss")
    ax.set_xlabel("direction 1 (filter-normalised)")
    ax.set_ylabel("direction 2 (filter-normalised)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    fileio.atomic_write_bytes(path, buf.getvalue())


def provenance(cfg: AnalyzeConfig, ckpt: dict[str, Any], data_dir: Path, rows: int,
               device: torch.device, params: Params) -> dict[str, Any]:  # fmt: skip
    """What run_meta.json records for a run, for this measurement."""
    mcfg = ckpt["model_config"]
    return {
        "command": "analyze", "flags": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(cfg).items()},
        "checkpoint": {"path": str(cfg.ckpt), "iter": ckpt.get("iter"), "arch": ckpt["arch"],
                       "best_val_loss": ckpt.get("best_val_loss"),
                       "payload_sha256": ckpt.get("payload_sha256"),
                       "weights": "ema" if cfg.ema else "raw"},
        "model_config": mcfg, "parameters": count(params),
        "data": {"dir": str(data_dir), "split": cfg.split, "batches": cfg.batches,
                 "rows": rows, "block_size": mcfg["block_size"], "seed": cfg.seed},
        "device": str(device), "dtype": "float32", "torch": torch.__version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def out_dir_of(cfg: AnalyzeConfig) -> Path:
    return cfg.out if cfg.out is not None else cfg.ckpt.parent / "analysis"


def run(cfg: AnalyzeConfig) -> dict[str, Any]:
    out = out_dir_of(cfg)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; choose a directory")
    device = resolve(cfg.device)
    ckpt = checkpoint.load(cfg.ckpt)
    mcfg = ModelConfig.from_dict(ckpt["model_config"])
    data_dir = data_dir_of(cfg, ckpt)
    ds = Dataset(data_dir)
    if ds.meta.get("vocab_size") not in (None, mcfg.vocab_size):
        raise UserError(
            f"{data_dir} has a vocabulary of {ds.meta['vocab_size']} but the model has "
            f"{mcfg.vocab_size}; pass the --data-dir it was trained on"
        )
    rows = cfg.batch_size or (ckpt.get("train_config") or {}).get("batch_size") or 8
    if cfg.what == "noise-scale" and rows < 2:
        raise UserError("--what noise-scale needs at least 2 rows per batch: raise --batch-size")
    model = models.get(ckpt["arch"])
    params = weights(cfg, ckpt, device)
    batches = draw_batches(cfg, ds, mcfg, rows, device)
    t0 = time.perf_counter()
    fields, line = measure(cfg, model, mcfg, params, batches)
    seconds = time.perf_counter() - t0
    result = {"what": cfg.what, "result": fields, "seconds": seconds}
    result |= provenance(cfg, ckpt, data_dir, rows, device, params)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.what}-iter{ckpt.get('iter', 0)}"
    written = [out / f"{stem}.json"]
    fileio.atomic_write_bytes(written[0], fileio.json_bytes(result))
    if cfg.what == "landscape":
        written.append(out / f"{stem}.png")
        plot_landscape(written[1], fields)
    where = " and ".join(map(str, written))
    batches_said = f"{cfg.batches} {cfg.split} batch{'es' if cfg.batches > 1 else ''}"
    print(f"{line}; {batches_said} of {rows}x{mcfg.block_size} tokens at "
          f"step {ckpt.get('iter', 0)}, {seconds:.1f} s; wrote {where}")  # fmt: skip
    return result
