"""metrics.csv (its columns are the command line's interface: scripts read them) and the
loss.png plot.

The CSV is rewritten whole, atomically, at every evaluation: it stays small, a crash never
leaves a torn row, and a resumed run can drop rows past its checkpoint before appending.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .. import fileio

COLUMNS = (
    "iter", "train_loss", "val_loss", "val_loss_raw", "val_loss_ema", "best_val_loss",
    "best_val_loss_raw", "best_val_loss_ema", "lr", "time_sec", "tokens_seen",
    "throughput_tps", "grad_norm",
)  # fmt: skip

Row = dict[str, float | int | None]


def read(path: Path, up_to_iter: int | None = None) -> list[Row]:
    """Rows of an existing metrics.csv (those with iter <= up_to_iter when given)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: Row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
            row["iter"] = int(row["iter"])  # type: ignore[arg-type]
            row["tokens_seen"] = int(row["tokens_seen"] or 0)
            if up_to_iter is None or row["iter"] <= up_to_iter:
                rows.append(row)
    return rows


def write(path: Path, rows: list[Row]) -> None:
    fileio.atomic_write_bytes(path, csv_bytes(rows))


def csv_bytes(rows: list[Row]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    return buf.getvalue().encode()


def _fmt(v: float | int | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v) if isinstance(v, int) else f"{v:.6g}"


def plot(path: Path, rows: list[Row]) -> None:
    """Train/val loss against iteration (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    iters = [r["iter"] for r in rows]
    for key, label in (
        ("train_loss", "train"),
        ("val_loss_raw", "val"),
        ("val_loss_ema", "val (EMA)"),
    ):
        points = [(i, r[key]) for i, r in zip(iters, rows, strict=True) if r.get(key) is not None]
        if points:
            ax.plot(
                *zip(*points, strict=True), label=label, marker="." if len(points) < 30 else None
            )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    fileio.atomic_write_bytes(path, buf.getvalue())
