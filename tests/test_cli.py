"""The command line's front door: the subcommand list, help texts with one default each, the
older flag spellings, and one short line for an unknown subcommand or flag."""

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from yocto_fn import cli

HELPED = list(cli.COMMANDS)


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_no_arguments_or_help_lists_every_subcommand_one_line_each(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]
    assert [name for name, _ in rows] == list(cli.COMMANDS)
    for name, text in rows:
        first_sentence = inspect.getdoc(cli.COMMANDS[name][0]).split(".")[0]
        assert text.startswith(" ".join(first_sentence.split())), (name, text)


@pytest.mark.parametrize("sub", HELPED)
def test_help_shows_one_default_per_flag_and_no_none(sub, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # a flag's entry on one line
    with pytest.raises(SystemExit) as e:
        cli.main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "None" not in out and "gpt_plus" not in out and "--model-type {" not in out
    for line in out.splitlines():
        assert line.count("(default") + line.count("(required") <= 1, line
        assert "(default: )" not in line, line


def parsed(*argv: str):
    return cli.parse(cli.amp_switches(list(argv)))


def test_older_spellings_still_parse():
    assert parsed("train", "--n_layer", "3").n_layer == parsed("train", "--n-layer", "3").n_layer
    assert parsed("train", "--n_layer=3").n_layer == 3
    assert parsed("train", "--model-type", "gpt-fast").model == "gpt-fast"
    assert parsed("train", "--model_type=gpt_plus").model == "gpt_plus"
    assert parsed("smoke-train", "--model", "gpt_plus").model == "gpt_plus"
    assert parsed("train", "--amp").amp == "on"
    assert parsed("train", "--no-amp").amp == "off"
    assert parsed("train", "--no_tie_weights", "--tie-weights").tie_weights is True
    assert parsed("prepare_char", "--text_path", "a.txt").text_path.name == "a.txt"
    assert parsed("sample", "--ckpt", "x.pt", "--prompt=--not a flag").prompt == "--not a flag"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("trian", "error: unknown subcommand 'trian'; did you mean 'train'? "
                  "(see yocto --help)"),
        ("train --n-layr 2", "error: unknown flag '--n-layr' for train; did you mean "
                             "'--n-layer'? (see yocto train --help)"),
        ("chat --ckpt x.pt --sytem-prompt hi", "error: unknown flag '--sytem-prompt' for chat; "
                                               "did you mean '--system-prompt'?"),
        ("smoke-cpu --zzz", "error: unknown flag '--zzz' for smoke-cpu (see"),
    ],
)  # fmt: skip
def test_an_unknown_name_is_one_short_line_with_the_closest_match(argv, message, capsys):
    assert cli.main(argv.split()) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and len(err) < 120, err


def test_the_installed_command_trains_the_demo_outside_the_checkout(tmp_path):
    """`pip install .` puts a `yocto` command on the path that needs nothing of the checkout:
    installed into its own folder and run from another, it prepares the embedded corpus and
    trains from it, with the package (and its data files) imported from the install."""
    root = Path(cli.__file__).resolve().parents[1]
    src, site, away = tmp_path / "src", tmp_path / "site", tmp_path / "away"
    away.mkdir()
    # from a copy of what the package is built from: the build writes into its source tree
    shutil.copytree(root / "yocto_fn", src / "yocto_fn",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(src)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    yocto = str(site / "bin" / "yocto")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([yocto, *argv], cwd=away, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import yocto_fn; print(yocto_fn.__file__)"],
        cwd=away, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)
    assert run().stdout.startswith("usage: yocto <subcommand>")
    assert run("prepare-char").returncode == 0
    shape = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
             "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2", "--eval-iters",
             "1", "--amp", "off", "--device", "cpu"]  # fmt: skip
    done = run("train", "--model", "gpt-fast", *shape, "--ckpt-dir", "ck")
    assert done.returncode == 0, done.stderr
    assert (away / "ck" / "best.pt").is_file() and (away / "data/char/meta.json").is_file()
    bad = run("train", "--n-layer", "0")
    assert bad.returncode == 2 and bad.stderr == "error: --n-layer must be at least 1 (got 0)\n"
