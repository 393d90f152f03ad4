"""Render benchmark records as `results.jsonl`, a markdown `table.md` and a `chart.png`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson

from yocto_fn import fileio

Record = dict[str, Any]


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}".replace(",", " ")


def _find(records: list[Record], **match: str) -> Record | None:
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def train_table(records: list[Record]) -> list[str]:
    rows = [r for r in records if r["benchmark"] == "train"]
    base = _find(rows, variant="reference", mode="eager")
    lines = [
        "| variant | mode | tokens/s | min–max | vs reference eager | MFU | MFU (datasheet) "
        "| peak memory MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['value'] / base['value']:.2f}×" if base else "–"
        sheet = f"{100 * r['mfu_datasheet']:.1f}%" if r.get("mfu_datasheet") else "–"
        lines.append(
            f"| {r['variant']} | {r['mode']} | {_fmt(r['value'])} | {_fmt(r['min'])}–"
            f"{_fmt(r['max'])} | {ratio} | {100 * r['mfu']:.1f}% | {sheet} | "
            f"{_fmt(r.get('peak_mem_mb'))} |"
        )
    return lines


def decode_table(records: list[Record]) -> list[str]:
    modes = [m for m in ("no cache", "cache", "compiled cache")
             if any(r["benchmark"] == "decode" and r["mode"] == m for r in records)]  # fmt: skip
    lines = [
        "| variant | " + " | ".join(f"{m} tokens/s" for m in modes) + " | prefill ms |",
        "|---|" + "---:|" * (len(modes) + 1),
    ]
    for variant in dict.fromkeys(r["variant"] for r in records if r["benchmark"] == "decode"):
        cells = []
        for mode in modes:
            r = _find(records, benchmark="decode", variant=variant, mode=mode)
            cells.append(_fmt(r["value"], 1) if r else "–")
        pre = _find(records, benchmark="prefill", variant=variant)
        lines.append(
            f"| {variant} | " + " | ".join(cells) + f" | {_fmt(pre and pre['value'], 1)} |"
        )
    return lines


def ensemble_table(records: list[Record]) -> list[str]:
    lines = ["| variant | vmap step ms | sequential steps ms | speed-up |", "|---|---:|---:|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in records if r["benchmark"] == "ensemble"):
        vm = next(r for r in records if r["benchmark"] == "ensemble" and r["variant"] == variant
                  and r["mode"].startswith("vmap"))  # fmt: skip
        seq = next(r for r in records if r["benchmark"] == "ensemble" and r["variant"] == variant
                   and r["mode"].startswith("sequential"))  # fmt: skip
        lines.append(f"| {variant} | {_fmt(vm['value'], 1)} | {_fmt(seq['value'], 1)} | "
                     f"{seq['value'] / vm['value']:.2f}× |")  # fmt: skip
    return lines


def markdown(records: list[Record], preset_line: str) -> str:
    first = records[0]
    decode = next((r for r in records if r["benchmark"] == "decode"), None)
    prefill = next((r for r in records if r["benchmark"] == "prefill"), None)
    ens = next((r for r in records if r["benchmark"] == "ensemble"), None)
    parts = [
        f"# {first['date']} · {first['device']} ({first['device_name']}) · torch {first['torch']}",
        "",
        f"Preset `{first['preset']}`: {preset_line}. Medians of {first['repeats']} repeats "
        "after warm-up.",
        "",
        "## Train",
        "",
        *train_table(records),
        "",
    ]
    if decode:
        parts += [
            f"## Decode (batch 1, greedy, {decode['tokens']} new tokens after a 16-token prompt;"
            f" prefill of a {prefill['tokens'] if prefill else '?'}-token prompt)",
            "",
            *decode_table(records),
            "",
        ]
    if ens:
        parts += ["## vmap ensemble (K=4 models, one train step)", "", *ensemble_table(records), ""]
    return "\n".join(parts)


def chart(records: list[Record]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for ax, bench, title in ((axes[0], "train", "train tokens/s"),
                             (axes[1], "decode", "decode tokens/s (batch 1)")):  # fmt: skip
        rows = [r for r in records if r["benchmark"] == bench]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        modes = list(dict.fromkeys(r["mode"] for r in rows))
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            xs, ys = [], []
            for i, v in enumerate(variants):
                r = _find(rows, variant=v, mode=mode)
                if r:
                    xs.append(i + j * width)
                    ys.append(r["value"])
            ax.bar(xs, ys, width, label=mode)
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(variants))], variants)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    first = records[0]
    fig.suptitle(f"{first['device_name']} · {first['preset']} · torch {first['torch']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(out: Path, records: list[Record], cfg: Any) -> None:
    from benchmarks.run import PRESETS

    p = PRESETS[cfg.preset]
    line = (f"{p.n_layer} layers / {p.n_head} heads / {p.n_embd} dim, block {p.block_size}, "
            f"batch {p.batch_size}, vocab 96")  # fmt: skip
    if cfg.quick:
        line += " (--quick: batch 8, fewer tokens, no compiled modes)"
    out.mkdir(parents=True, exist_ok=True)
    jsonl = b"".join(orjson.dumps(r) + b"\n" for r in records)
    table = markdown(records, line).encode()
    png = chart(records)
    fileio.write_files({
        out / "results.jsonl": lambda f: f.write(jsonl),
        out / "table.md": lambda f: f.write(table),
        out / "chart.png": lambda f: f.write(png),
    })  # fmt: skip
