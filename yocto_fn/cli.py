"""The command line: one subcommand per task, each a thin call into the library. It is
`yocto` once the package is installed, and `python cli.py` in a checkout.

    yocto prepare-char [--text-path FILE] [--out-dir data/char] ...
    yocto prepare-tokenizer [--text-path FILE] [--vocab-size 8000] ...
    yocto prepare-chat [--jsonl-path FILE ...] [--vocab-from base.pt] [--out-dir data/chat]
    yocto train --model gpt-fast [--data-dir data/char] [--max-iters 1000] ...
    yocto sweep --lrs 1e-3 3e-4 [--seeds 0 1] [--out-dir sweeps/run] ...
    yocto compare sweeps/adamw sweeps/muon [--metric best_val_loss|final_val_loss]
    yocto sample --ckpt checkpoints/run/best.pt [--prompt "Hello"] ...
    yocto chat --ckpt checkpoints/run/best.pt [--system-prompt "..."] ...
    yocto serve --ckpt checkpoints/run/best.pt [--port 8000] [--max-batch 16] ...
    yocto recommend [--data-dir data/char] [--priority speed|quality] ...
    yocto analyze --ckpt checkpoints/run/best.pt --what sharpness|trace|noise-scale|...
    yocto export --ckpt checkpoints/run/best.pt --out exported --format safetensors|hf
    yocto import --hf-dir DIR --out checkpoints/imported.pt
    yocto smoke-cpu | smoke-train      (end with PASS or FAIL; exit 1 on FAIL)
    yocto bench [--preset tiny|small] [--quick] [--device cpu cuda] ...

`yocto` (or `--help`) lists the subcommands. Flags accept both spellings,
`--text-path` and `--text_path`. Mistakes in the input (an unknown subcommand or flag, missing
files, bad values) print one line on stderr and exit with status 2: tyro finds a parse
failure and its error hook hands the report over, and a config refuses a bad value itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

import tyro
import tyro._errors as tyro_errors

from . import data
from .bench.presets import BenchConfig
from .config import (
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
from .errors import UserError
from .options import flag


def _prepare_char(cfg: data.PrepareCharConfig) -> None:
    meta = data.prepare_char(cfg)
    _report_prepared(cfg.out_dir, meta, "vocab.json")


def _prepare_tokenizer(cfg: data.PrepareTokenizerConfig) -> None:
    meta = data.prepare_tokenizer(cfg)
    _report_prepared(cfg.out_dir, meta, "tokenizer.json")


def _prepare_chat(cfg: data.PrepareChatConfig) -> None:
    meta = data.prepare_chat(cfg)
    print(f"wrote {cfg.out_dir}/{{train,val}}{{.bin,.mask.bin,.starts.bin}}, "
          f"{meta['tokenizer_file']}, meta.json")  # fmt: skip
    print(data.chat_summary(meta))


def _report_prepared(out_dir, meta: dict, vocab_file: str) -> None:
    print(
        f"wrote {out_dir}/{{train.bin,val.bin,{vocab_file},meta.json}}: "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab_size']}, dtype {meta['dtype']}, corpus: {meta['corpus']}"
    )


def _train(cfg: TrainConfig) -> None:
    from .run.trainer import train

    result = train(cfg)
    if result["stopped"] != "interrupted" and result["main"]:
        print(
            f"done: {result['iter']} steps, best val loss {result['best_val_loss']:.4f}; "
            f"checkpoints and metrics in {cfg.ckpt_dir}"
        )


def _sweep(cfg: SweepConfig) -> None:
    from .run.sweep import sweep

    sweep(cfg)


def _sample(cfg: SampleConfig) -> None:
    from .generate import sample

    sample.run(cfg)


def _chat(cfg: ChatConfig) -> None:
    from .generate import chat

    chat.run(cfg)


def _serve(cfg: ServeConfig) -> None:
    try:
        from .generate import serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "uvicorn", "starlette"):
            raise
        raise UserError(f"serve needs {exc.name}: pip install -e '.[serve]'") from None
    serve.run(cfg)


def _recommend(cfg: RecommendConfig) -> None:
    from .plan.recommend import recommend

    recommend(cfg)


def _compare(cfg: CompareConfig) -> None:
    try:
        import scipy  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("compare needs scipy: pip install -e '.[research]'") from None
    from .run import compare

    compare.run(cfg)


def _analyze(cfg: AnalyzeConfig) -> None:
    from .run import analyze

    analyze.run(cfg)


def _export(cfg: ExportConfig) -> None:
    from .formats import interop

    interop.export(cfg)


def _import(cfg: ImportConfig) -> None:
    from .formats import interop

    interop.import_hf(cfg)


def _smoke_cpu(cfg: SmokeCpuConfig) -> int:
    from .run.smoke import smoke_cpu

    return 0 if smoke_cpu(cfg) else 1


def _smoke_train(cfg: SmokeTrainConfig) -> int:
    from .run.smoke import smoke_train

    return 0 if smoke_train(cfg) else 1


def _bench(cfg: BenchConfig) -> None:
    from .bench import run

    run.run(cfg)


COMMANDS: dict[str, tuple[type, Callable[[Any], int | None]]] = {
    "prepare-char": (data.PrepareCharConfig, _prepare_char),
    "prepare-tokenizer": (data.PrepareTokenizerConfig, _prepare_tokenizer),
    "prepare-chat": (data.PrepareChatConfig, _prepare_chat),
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


def overview(prog: str) -> str:
    """What the bare command and its --help print: every subcommand, one line each."""
    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {summary(cls)}" for name, (cls, _) in COMMANDS.items()]
    return "\n".join([
        f"usage: {prog} <subcommand> [flags]", "", "subcommands:", *rows, "",
        f"{prog} <subcommand> --help lists its flags (each also takes its underscore "
        "spelling, --n_layer).",
    ]) + "\n"  # fmt: skip


def flag_names(cls: type) -> list[str]:
    """Every flag a config takes, hyphenated (--no-X too for a boolean X): the candidates
    of a did-you-mean."""
    hints = typing.get_type_hints(cls)
    names = ["--help"]
    for field in dataclasses.fields(cls):
        name = flag(field.name)
        names += [name, "--no-" + name[2:]] if hints[field.name] is bool else [name]
    return names


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def shown(argument: Any) -> str:
    """How a refusal names tyro's argument: its flag, or a positional's metavar."""
    lowered = argument.lowered
    return lowered.metavar if argument.is_positional() else lowered.name_or_flags[0]


def refusal(event: tyro_errors.ParseErrorEvent, argv: list[str], prog: str) -> UserError:
    """One line for a parse failure tyro reports, from the event's own fields."""
    name = argv[0].replace("_", "-") if argv else ""
    help_hint = f"(see {prog} {name} --help)" if name in COMMANDS else f"(see {prog} --help)"
    if isinstance(event, tyro_errors.UnrecognizedArgs):
        token = event.tokens[0]
        if name not in COMMANDS:
            if token.startswith("-"):
                return UserError(f"{token} needs a subcommand before it, e.g. {prog} train "
                                 f"{token} {help_hint}")  # fmt: skip
            hint = did_you_mean(name, list(COMMANDS))
            return UserError(f"unknown subcommand {argv[0]!r}{hint} {help_hint}")
        flags = [t for t in event.tokens if t.startswith("--")]
        if not flags:
            return UserError(f"unexpected argument {token!r} for {name} {help_hint}")
        typed = flags[0].split("=", 1)[0]
        hint = did_you_mean(typed.replace("_", "-"), flag_names(COMMANDS[name][0]))
        return UserError(f"unknown flag {typed!r} for {name}{hint} {help_hint}")
    if isinstance(event, tyro_errors.InvalidChoice):
        # tyro lists 'None' and the underscore aliases of hyphenated names among the choices
        names = set(event.choices) - {"None"}
        names -= {n for n in names if "_" in n and n.replace("_", "-") in names}
        return UserError(f"invalid choice {event.value!r} for {shown(event.argument)}: expected "
                         f"one of {', '.join(sorted(names))} {help_hint}")  # fmt: skip
    if isinstance(event, tyro_errors.BadValue):
        what = "takes no value" if event.reason == "fixed" else "needs a value"
        return UserError(f"{shown(event.argument)} {what} {help_hint}")
    if isinstance(event, tyro_errors.MissingArgs):
        missing = ", ".join(shown(a.arg) for a in event.missing_arguments)
        return UserError(f"{name} needs {missing} {help_hint}")
    if isinstance(event, tyro_errors.InstantiationFailure):
        where = f" for {shown(event.argument)}" if event.argument is not None else ""
        return UserError(f"bad value{where}: {event.message} {help_hint}")
    return UserError(f"invalid arguments ({type(event).__name__}) {help_hint}")


def parse(argv: list[str], prog: str = "yocto") -> Any:
    """Parse argv into one config dataclass. tyro finds what is wrong; its error hook turns
    the report into one UserError line (and a config's own check raises one itself)."""
    argv = aliases(amp_switches(argv))

    def hook(event: tyro_errors.ParseErrorEvent) -> None:
        raise refusal(event, argv, prog)

    subcommands = {name: cls for name, (cls, _) in COMMANDS.items()}
    with tyro_errors.on_parse_error(hook):
        return tyro.extras.subcommand_cli_from_dict(
            subcommands, args=argv, prog=prog, config=(tyro.conf.DisallowNone,)
        )


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


def main(argv: list[str] | None = None, prog: str = "yocto") -> int:
    """Run one subcommand; returns the exit status (2 for a mistake in the input)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print(overview(prog), end="")
        return 0
    try:
        cfg = parse(argv, prog)
        status = next(fn for cls, fn in COMMANDS.values() if type(cfg) is cls)(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0
