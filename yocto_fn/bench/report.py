"""How every benchmark writes its results: markdown tables and documents, PNG figures, JSON
lines, and folders written all or nothing; and the suite's own `table.md` and `chart.png`."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from yocto_fn import fileio
from yocto_fn.bench.presets import PRESETS

Record = dict[str, Any]


def table(head: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A markdown table, a line per row; `align` holds "l" or "r" for each column."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    body = [f"| {' | '.join(map(str, row))} |" for row in rows]
    return "\n".join([f"| {' | '.join(head)} |", rule, *body])


def markdown(title: str, intro: str, sections: Mapping[str, str]) -> str:
    """A results document: `# title`, the intro paragraph, then `## heading` and body for
    each section."""
    parts = [f"# {title}", "", intro, ""]
    for heading, body in sections.items():
        parts += [f"## {heading}", "", body, ""]
    return "\n".join(parts)


def plot(draw: Callable[[Any], None], rows: int, cols: int, size: tuple[float, float],
         title: str | None = None, **subplots: Any) -> bytes:  # fmt: skip
    """The PNG of a figure of rows x cols panels, drawn by `draw(axes)` (axes a 2-D array);
    matplotlib renders off-screen (Agg), loaded only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=100, squeeze=False, **subplots)
    draw(axes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def print_jsonl(rows: Iterable[Mapping[str, Any]]) -> None:
    """A JSON line per row on stdout, after any table: the form other tools read back."""
    for row in rows:
        print(orjson.dumps(row).decode(), flush=True)


def save(out: Path, files: Mapping[str, bytes | str]) -> None:
    """Write `files` (name: content) into the folder `out`, all of them or none."""
    out.mkdir(parents=True, exist_ok=True)
    data = {out / name: c.encode() if isinstance(c, str) else c for name, c in files.items()}
    fileio.write_files({path: (lambda f, b=b: f.write(b)) for path, b in data.items()})


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}".replace(",", " ")


def _find(records: list[Record], **match: str) -> Record | None:
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def train_table(records: list[Record]) -> str:
    rows = [r for r in records if r["benchmark"] == "train"]
    base = _find(rows, variant="reference", mode="eager")
    head = ("variant", "mode", "tokens/s", "min–max", "vs reference eager", "MFU",
            "MFU (datasheet)", "peak memory MB")  # fmt: skip
    return table(head, [
        (r["variant"], r["mode"], _fmt(r["value"]), f"{_fmt(r['min'])}–{_fmt(r['max'])}",
         f"{r['value'] / base['value']:.2f}×" if base else "–", f"{100 * r['mfu']:.1f}%",
         f"{100 * r['mfu_datasheet']:.1f}%" if r.get("mfu_datasheet") else "–",
         _fmt(r.get("peak_mem_mb")))
        for r in rows
    ], "llrrrrrr")  # fmt: skip


def decode_table(records: list[Record]) -> str:
    order = ("no cache", "cache", "compiled cache", "compiled cache bf16", "compiled cache int8")
    modes = [m for m in order
             if any(r["benchmark"] == "decode" and r["mode"] == m for r in records)]  # fmt: skip
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in records if r["benchmark"] == "decode"):
        cells = []
        for mode in modes:
            r = _find(records, benchmark="decode", variant=variant, mode=mode)
            cells.append(_fmt(r["value"], 1) if r else "–")
        pre = _find(records, benchmark="prefill", variant=variant)
        rows.append((variant, *cells, _fmt(pre and pre["value"], 1)))
    head = ("variant", *(f"{m} tokens/s" for m in modes), "prefill ms")
    return table(head, rows, "l" + "r" * (len(modes) + 1))


def ensemble_table(records: list[Record]) -> str:
    """Ensemble step vs the loop of E train steps, per shape, variant and mode."""
    rows = [r for r in records if r["benchmark"] == "ensemble"]
    out = []
    for r in rows:
        kind, _, contender = r["mode"].partition(" ")
        if contender != "ensemble":
            continue
        loop = next(x for x in rows if x["variant"] == r["variant"] and x["mode"] == f"{kind} loop"
                    and x["config"] == r["config"])  # fmt: skip
        out.append((r["config"]["case"], r["variant"], kind, _fmt(r["value"]),
                    _fmt(loop["value"]), f"{r['value'] / loop['value']:.2f}×"))  # fmt: skip
    head = ("shape", "variant", "mode", "ensemble tokens/s", "loop tokens/s", "speed-up")
    return table(head, out, "lllrrr")


def per_example_table(records: list[Record]) -> str:
    """`per_example_grads` vs a loop of one-row gradients and vs one batch gradient."""
    rows = [r for r in records if r["benchmark"] == "per-example"]
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        each, loop, batch = (_find(rows, variant=variant, mode=m)
                             for m in ("per-example", "loop", "batch gradient"))  # fmt: skip
        out.append((variant, _fmt(each["value"]), _fmt(loop["value"]),
                    f"{each['value'] / loop['value']:.1f}×", _fmt(batch["value"]),
                    f"{batch['value'] / each['value']:.2f}×"))  # fmt: skip
    head = ("variant", "per-example tokens/s", "loop tokens/s", "vs loop",
            "batch gradient tokens/s", "cost vs batch gradient")  # fmt: skip
    return table(head, out, "lrrrrr")


def suite_markdown(records: list[Record], preset_line: str) -> str:
    """The suite's `table.md`: a section per part that ran."""
    first = records[0]
    has = {r["benchmark"] for r in records}
    decode = next((r for r in records if r["benchmark"] == "decode"), None)
    prefill = next((r for r in records if r["benchmark"] == "prefill"), None)
    preset = f"Preset `{first['preset']}`: {preset_line}. " if has & {"train", "decode"} else ""
    sections = {}
    if "train" in has:
        sections["Train"] = train_table(records)
    if decode:
        heading = (
            f"Decode (batch 1, greedy, {decode['tokens']} new tokens after a 16-token "
            f"prompt; prefill of a {prefill['tokens'] if prefill else '?'}-token prompt)"
        )
        sections[heading] = decode_table(records)
    if "ensemble" in has:
        sections["Ensemble: E members in one step vs E train steps"] = ensemble_table(records)
    if "per-example" in has:
        case = next(r for r in records if r["benchmark"] == "per-example")["config"]["case"]
        heading = f"Per-example gradients ({case.removesuffix(', E=1')})"
        sections[heading] = per_example_table(records)
    title = f"{first['date']} · {first['device']} ({first['device_name']}) · torch {first['torch']}"
    return markdown(title, f"{preset}Medians of {first['repeats']} repeats after warm-up.",
                    sections)  # fmt: skip


def _series(r: Record) -> str:
    """A bar's legend entry: the mode, and for the ensemble the shape it ran at."""
    if r["benchmark"] != "ensemble":
        return r["mode"]
    return f"{r['mode']} ({r['config']['case'].split(',')[0]})"


def chart(records: list[Record]) -> bytes:
    """A panel of bars per part of the suite: tokens/s by variant, a bar per mode."""
    panels = [(bench, title) for bench, title in (
        ("train", "train tokens/s"), ("decode", "decode tokens/s (batch 1)"),
        ("ensemble", "ensemble vs loop, tokens/s"), ("per-example", "per-example grads, tokens/s"),
    ) if any(r["benchmark"] == bench for r in records)]  # fmt: skip

    def draw(axes: Any) -> None:
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
            ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(variants))],
                          variants)  # fmt: skip
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)

    first = records[0]
    title = f"{first['device_name']} · {first['preset']} · torch {first['torch']}"
    return plot(draw, 1, len(panels), (6 * len(panels), 4.5), title)


def write_report(out: Path, records: list[Record], cfg: Any) -> None:
    p = PRESETS[cfg.preset]
    line = (f"{p.n_layer} layers / {p.n_head} heads / {p.n_embd} dim, block {p.block_size}, "
            f"batch {p.batch_size}, vocab 96")  # fmt: skip
    if cfg.quick:
        line += " (--quick: batch 8, fewer tokens, no compiled modes)"
    save(out, {"results.jsonl": jsonl(records), "table.md": suite_markdown(records, line),
               "chart.png": chart(records)})  # fmt: skip
