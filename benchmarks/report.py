"""Render benchmark records as `results.jsonl`, a markdown `table.md` and a `chart.png`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson

from benchmarks.presets import PRESETS
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
    order = ("no cache", "cache", "compiled cache", "compiled cache bf16", "compiled cache int8")
    modes = [m for m in order
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
    """Ensemble step vs the loop of E train steps, per shape, variant and mode."""
    rows = [r for r in records if r["benchmark"] == "ensemble"]
    lines = [
        "| shape | variant | mode | ensemble tokens/s | loop tokens/s | speed-up |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        kind, _, contender = r["mode"].partition(" ")
        if contender != "ensemble":
            continue
        loop = next(x for x in rows if x["variant"] == r["variant"] and x["mode"] == f"{kind} loop"
                    and x["config"] == r["config"])  # fmt: skip
        lines.append(
            f"| {r['config']['case']} | {r['variant']} | {kind} | {_fmt(r['value'])} | "
            f"{_fmt(loop['value'])} | {r['value'] / loop['value']:.2f}× |"
        )
    return lines


def per_example_table(records: list[Record]) -> list[str]:
    """`per_example_grads` vs a loop of one-row gradients and vs one batch gradient."""
    rows = [r for r in records if r["benchmark"] == "per-example"]
    lines = [
        "| variant | per-example tokens/s | loop tokens/s | vs loop | batch gradient tokens/s "
        "| cost vs batch gradient |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        each, loop, batch = (_find(rows, variant=variant, mode=m)
                             for m in ("per-example", "loop", "batch gradient"))  # fmt: skip
        lines.append(
            f"| {variant} | {_fmt(each['value'])} | {_fmt(loop['value'])} | "
            f"{each['value'] / loop['value']:.1f}× | {_fmt(batch['value'])} | "
            f"{batch['value'] / each['value']:.2f}× |"
        )
    return lines


def markdown(records: list[Record], preset_line: str) -> str:
    first = records[0]
    has = {r["benchmark"] for r in records}
    decode = next((r for r in records if r["benchmark"] == "decode"), None)
    prefill = next((r for r in records if r["benchmark"] == "prefill"), None)
    preset = f"Preset `{first['preset']}`: {preset_line}. " if has & {"train", "decode"} else ""
    parts = [
        f"# {first['date']} · {first['device']} ({first['device_name']}) · torch {first['torch']}",
        "",
        f"{preset}Medians of {first['repeats']} repeats after warm-up.",
        "",
    ]
    if "train" in has:
        parts += ["## Train", "", *train_table(records), ""]
    if decode:
        parts += [
            f"## Decode (batch 1, greedy, {decode['tokens']} new tokens after a 16-token prompt;"
            f" prefill of a {prefill['tokens'] if prefill else '?'}-token prompt)",
            "",
            *decode_table(records),
            "",
        ]
    if "ensemble" in has:
        parts += ["## Ensemble: E members in one step vs E train steps", "",
                  *ensemble_table(records), ""]  # fmt: skip
    if "per-example" in has:
        case = next(r for r in records if r["benchmark"] == "per-example")["config"]["case"]
        parts += [f"## Per-example gradients ({case.removesuffix(', E=1')})", "",
                  *per_example_table(records), ""]  # fmt: skip
    return "\n".join(parts)


def _series(r: Record) -> str:
    """A bar's legend entry: the mode, and for the ensemble the shape it ran at."""
    if r["benchmark"] != "ensemble":
        return r["mode"]
    return f"{r['mode']} ({r['config']['case'].split(',')[0]})"


def chart(records: list[Record]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(bench, title) for bench, title in (
        ("train", "train tokens/s"), ("decode", "decode tokens/s (batch 1)"),
        ("ensemble", "ensemble vs loop, tokens/s"), ("per-example", "per-example grads, tokens/s"),
    ) if any(r["benchmark"] == bench for r in records)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, (bench, title) in zip(axes[0], panels, strict=True):
        rows = [r for r in records if r["benchmark"] == bench]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        modes = list(dict.fromkeys(_series(r) for r in rows))
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            found = [(i, r) for i, v in enumerate(variants) for r in rows
                     if r["variant"] == v and _series(r) == mode]  # fmt: skip
            ax.bar([i + j * width for i, _ in found], [r["value"] for _, r in found], width,
                   label=mode)  # fmt: skip
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
