"""yocto_fn command line: one subcommand per task, each a thin call into the library.

    python cli.py prepare-char [--text-path FILE] [--out-dir data/char] ...
    python cli.py prepare-tokenizer [--text-path FILE] [--vocab-size 8000] ...
    python cli.py train --model gpt-fast [--data-dir data/char] [--max-iters 1000] ...
    python cli.py sweep --lrs 1e-3 3e-4 [--seeds 0 1] [--out-dir sweeps/run] ...
    python cli.py compare sweeps/adamw sweeps/muon [--metric best_val_loss|final_val_loss]
    python cli.py sample --ckpt checkpoints/run/best.pt [--prompt "Hello"] ...
    python cli.py chat --ckpt checkpoints/run/best.pt [--system-prompt "..."] ...
    python cli.py serve --ckpt checkpoints/run/best.pt [--port 8000] [--max-batch 16] ...
    python cli.py recommend [--data-dir data/char] [--priority speed|quality] ...
    python cli.py analyze --ckpt checkpoints/run/best.pt --what sharpness|trace|noise-scale|...
    python cli.py export --ckpt checkpoints/run/best.pt --out exported --format safetensors|hf
    python cli.py import --hf-dir DIR --out checkpoints/imported.pt
    python cli.py smoke-cpu | smoke-train      (end with PASS or FAIL; exit 1 on FAIL)
    python cli.py bench [--preset tiny|small] [--quick] [--device cpu cuda] ...

`python cli.py` (or `--help`) lists the subcommands. Flags accept both spellings,
`--text-path` and `--text_path`. Mistakes in the input (an unknown subcommand or flag, missing
files, bad values) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import io
import re
import sys
import typing
from collections.abc import Callable
from typing import Any

import tyro

from yocto_fn import data
from yocto_fn.bench.presets import BenchConfig
from yocto_fn.config import (
    AnalyzeConfig,
    ChatConfig,
    CompareConfig,
    ExportConfig,
    ImportConfig,
    RecommendConfig,
    SampleConfig,
    ServeConfig,
    SmokeCpuConfig,
    SmokeTrainConfig,
    SweepConfig,
    TrainConfig,
)
from yocto_fn.errors import UserError


def _prepare_char(cfg: data.PrepareCharConfig) -> None:
    meta = data.prepare_char(cfg)
    _report_prepared(cfg.out_dir, meta, "vocab.json")


def _prepare_tokenizer(cfg: data.PrepareTokenizerConfig) -> None:
    meta = data.prepare_tokenizer(cfg)
    _report_prepared(cfg.out_dir, meta, "tokenizer.json")


def _report_prepared(out_dir, meta: dict, vocab_file: str) -> None:
    print(
        f"wrote {out_dir}/{{train.bin,val.bin,{vocab_file},meta.json}}: "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab_size']}, dtype {meta['dtype']}, corpus: {meta['corpus']}"
    )


def _train(cfg: TrainConfig) -> None:
    from yocto_fn.run.trainer import train

    result = train(cfg)
    if result["stopped"] != "interrupted" and result["main"]:
        print(
            f"done: {result['iter']} steps, best val loss {result['best_val_loss']:.4f}; "
            f"checkpoints and metrics in {cfg.ckpt_dir}"
        )


def _sweep(cfg: SweepConfig) -> None:
    from yocto_fn.run.sweep import sweep

    sweep(cfg)


def _sample(cfg: SampleConfig) -> None:
    from yocto_fn.generate import sample

    sample.run(cfg)


def _chat(cfg: ChatConfig) -> None:
    from yocto_fn.generate import chat

    chat.run(cfg)


def _serve(cfg: ServeConfig) -> None:
    try:
        from yocto_fn.generate import serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "uvicorn", "starlette"):
            raise
        raise UserError(f"serve needs {exc.name}: pip install -e '.[serve]'") from None
    serve.run(cfg)


def _recommend(cfg: RecommendConfig) -> None:
    from yocto_fn.plan.recommend import recommend

    recommend(cfg)


def _compare(cfg: CompareConfig) -> None:
    try:
        import scipy  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("compare needs scipy: pip install -e '.[research]'") from None
    from yocto_fn.run import compare

    compare.run(cfg)


def _analyze(cfg: AnalyzeConfig) -> None:
    from yocto_fn.run import analyze

    analyze.run(cfg)


def _export(cfg: ExportConfig) -> None:
    from yocto_fn.formats import interop

    interop.export(cfg)


def _import(cfg: ImportConfig) -> None:
    from yocto_fn.formats import interop

    interop.import_hf(cfg)


def _smoke_cpu(cfg: SmokeCpuConfig) -> int:
    from yocto_fn.run.smoke import smoke_cpu

    return 0 if smoke_cpu(cfg) else 1


def _smoke_train(cfg: SmokeTrainConfig) -> int:
    from yocto_fn.run.smoke import smoke_train

    return 0 if smoke_train(cfg) else 1


def _bench(cfg: BenchConfig) -> None:
    from yocto_fn.bench import run

    run.run(cfg)


COMMANDS: dict[str, tuple[type, Callable[[Any], int | None]]] = {
    "prepare-char": (data.PrepareCharConfig, _prepare_char),
    "prepare-tokenizer": (data.PrepareTokenizerConfig, _prepare_tokenizer),
    "train": (TrainConfig, _train),
    "sweep": (SweepConfig, _sweep),
    "compare": (CompareConfig, _compare),
    "sample": (SampleConfig, _sample),
    "chat": (ChatConfig, _chat),
    "serve": (ServeConfig, _serve),
    "recommend": (RecommendConfig, _recommend),
    "analyze": (AnalyzeConfig, _analyze),
    "export": (ExportConfig, _export),
    "import": (ImportConfig, _import),
    "smoke-cpu": (SmokeCpuConfig, _smoke_cpu),
    "smoke-train": (SmokeTrainConfig, _smoke_train),
    "bench": (BenchConfig, _bench),
}


AMP_CHOICES = ("auto", "on", "off")
ALIASES = {"--model-type": "--model"}  # older spellings, kept out of the help


def summary(cls: type) -> str:
    """A subcommand's line in the overview: its config's first docstring paragraph."""
    return " ".join(inspect.getdoc(cls).split("\n\n")[0].split())


def overview() -> str:
    """What `python cli.py` and `python cli.py --help` print: every subcommand, one line each."""
    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {summary(cls)}" for name, (cls, _) in COMMANDS.items()]
    return "\n".join([
        "usage: python cli.py <subcommand> [flags]", "", "subcommands:", *rows, "",
        "python cli.py <subcommand> --help lists its flags (each also takes its underscore "
        "spelling, --n_layer).",
    ]) + "\n"  # fmt: skip


def flag_names(cls: type) -> set[str]:
    """Every flag a config takes, hyphenated: one per field, and --no-X for a boolean X."""
    hints = typing.get_type_hints(cls)
    names = {"--help"}
    for field in dataclasses.fields(cls):
        flag = field.name.replace("_", "-")
        names |= {f"--{flag}", f"--no-{flag}"} if hints[field.name] is bool else {f"--{flag}"}
    return names


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_names(argv: list[str]) -> None:
    """An unknown subcommand or flag: one line naming it and its closest match. tyro's own
    message lists every near miss with its help, run together on one line."""
    name = argv[0].replace("_", "-")
    if name.startswith("-"):
        raise UserError(f"{argv[0]} needs a subcommand before it, e.g. python cli.py train "
                        f"{argv[0]} (see python cli.py --help)")  # fmt: skip
    if name not in COMMANDS:
        hint = did_you_mean(name, list(COMMANDS))
        raise UserError(f"unknown subcommand {argv[0]!r}{hint} (see python cli.py --help)")
    known = flag_names(COMMANDS[name][0])
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0].replace("_", "-")
        if arg.startswith("--") and flag not in known:
            hint = did_you_mean(flag, sorted(known))
            raise UserError(f"unknown flag {arg.split('=', 1)[0]!r} for {name}{hint} "
                            f"(see python cli.py {name} --help)")  # fmt: skip


def _one_line(tyro_message: str) -> str:
    """Condense tyro's boxed error (Unicode or ASCII box) into one line: the body, without
    the box's title, the argument's helptext or the pointer to --help."""
    lines = [line.strip().strip("│╭╮╰╯─ ").strip() for line in tyro_message.splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("─-+| ")]
    body = []
    for line in lines[1:]:
        if line.startswith(("Argument helptext", "For full helptext")):
            break
        body.append(line)
    text = re.sub(r"\s+", " ", " ".join(body)).strip()
    return re.sub(r"Expected one of \((.*?)\)", _choices, text) or "invalid arguments"


def _choices(match: re.Match) -> str:
    """tyro lists a flag's choices in set order, with 'None' and the underscore aliases of
    hyphenated names (a name whose only spelling has underscores is kept as it is)."""
    names = {n.strip(" '") for n in match.group(1).split(",")} - {"None"}
    aliases = {n for n in names if "_" in n and n.replace("_", "-") in names}
    return "expected one of " + ", ".join(sorted(names - aliases))


def parse(argv: list[str]) -> Any:
    """Parse argv into one config dataclass; a bad flag raises UserError (one line)."""
    argv = aliases(argv)
    check_names(argv)
    subcommands = {name: cls for name, (cls, _) in COMMANDS.items()}
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.extras.subcommand_cli_from_dict(
                subcommands, args=argv, config=(tyro.conf.DisallowNone,)
            )
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise UserError(f"{_one_line(captured.getvalue())} (see --help)") from None


def amp_switches(argv: list[str]) -> list[str]:
    """The switch forms of --amp keep working: a bare --amp is --amp on, --no-amp is off."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--no-amp", "--no_amp"):
            out += ["--amp", "off"]
        elif arg == "--amp" and (i + 1 == len(argv) or argv[i + 1] not in AMP_CHOICES):
            out += ["--amp", "on"]
        else:
            out.append(arg)
    return out


def aliases(argv: list[str]) -> list[str]:
    """Older flag spellings (`--model-type`, `--model_type=X`) become the current ones."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        out.append(ALIASES.get(flag.replace("_", "-"), flag) + eq + value)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = amp_switches(sys.argv[1:] if argv is None else argv)
    if argv in ([], ["-h"], ["--help"]):
        print(overview(), end="")
        return 0
    try:
        cfg = parse(argv)
        status = next(fn for cls, fn in COMMANDS.values() if type(cfg) is cls)(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
