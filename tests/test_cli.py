"""The command line's front door: the subcommand list, help texts with one default each, the
older flag spellings, and one short line for an unknown subcommand or flag."""

import inspect

import pytest

import cli

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
                  "(see python cli.py --help)"),
        ("train --n-layr 2", "error: unknown flag '--n-layr' for train; did you mean "
                             "'--n-layer'? (see python cli.py train --help)"),
        ("chat --ckpt x.pt --sytem-prompt hi", "error: unknown flag '--sytem-prompt' for chat; "
                                               "did you mean '--system-prompt'?"),
        ("smoke-cpu --zzz", "error: unknown flag '--zzz' for smoke-cpu (see"),
    ],
)  # fmt: skip
def test_an_unknown_name_is_one_short_line_with_the_closest_match(argv, message, capsys):
    assert cli.main(argv.split()) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and len(err) < 120, err
