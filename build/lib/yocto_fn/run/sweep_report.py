"""What a sweep reports: the ranked summary (summary.csv and the printed table), the
members' val curves (val_curves.png), and how a grid point is named in all of them."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from .. import fileio
from .runstate import RunState

GridPoint = dict[str, Any]
SUMMARY_COLUMNS = ("member", "lr", "muon_lr", "seed", "weight_decay", "best_val_loss",
                   "final_val_loss", "rank")  # fmt: skip


def point_label(point: GridPoint) -> str:
    """A grid point as the log, the table and the plot name it."""
    muon = f", muon lr {point['muon_lr']:g}" if "muon_lr" in point else ""
    return f"lr {point['lr']:g}{muon}, seed {point['seed']}, wd {point['weight_decay']:g}"


def summary(grid: list[GridPoint], members: list[RunState]) -> list[dict[str, Any]]:
    """One row per member, ranked by best val loss (1 = best)."""
    rows = [
        {"member": i, **point, "best_val_loss": m.progress.best_val_loss,
         "final_val_loss": m.progress.rows[-1]["val_loss"] if m.progress.rows else math.nan}
        for i, (point, m) in enumerate(zip(grid, members, strict=True))
    ]  # fmt: skip
    order = sorted(range(len(rows)), key=lambda i: (math.isnan(rows[i]["best_val_loss"]),
                                                    rows[i]["best_val_loss"]))  # fmt: skip
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    return sorted(rows, key=lambda r: r["rank"])


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv, losses as metrics.csv writes them (6 significant digits)."""
    buf = io.StringIO()
    columns = [c for c in SUMMARY_COLUMNS if c != "muon_lr" or "muon_lr" in rows[0]]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    fileio.atomic_write_bytes(path, buf.getvalue().encode())


def table(rows: list[dict[str, Any]]) -> str:
    muon = "muon_lr" in rows[0]
    head = f"{'rank':>4}  {'member':<9} {'lr':>9} " + (f"{'muon lr':>9} " if muon else "")
    lines = [head + f"{'seed':>6} {'wd':>7}  {'best val':>9}  {'final val':>9}"]
    for r in rows:
        mlr = f"{r['muon_lr']:>9.3g} " if muon else ""
        lines.append(
            f"{r['rank']:>4}  member-{r['member']:02d} {r['lr']:>9.3g} {mlr}{r['seed']:>6} "
            f"{r['weight_decay']:>7.3g}  {r['best_val_loss']:>9.4f}  {r['final_val_loss']:>9.4f}"
        )
    return "\n".join(lines)


def plot_val_curves(path: Path, grid: list[GridPoint], members: list[RunState]) -> None:
    """Every member's val loss against iteration in one figure (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, (point, m) in enumerate(zip(grid, members, strict=True)):
        rows = [r for r in m.progress.rows if r.get("val_loss") is not None]
        label = f"{i:02d}: {point_label(point)}"
        ax.plot([r["iter"] for r in rows], [r["val_loss"] for r in rows], label=label,
                marker="." if len(rows) < 30 else None)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("val loss")
    ax.grid(alpha=0.3)
    if len(members) <= 16:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    fileio.atomic_write_bytes(path, buf.getvalue())
