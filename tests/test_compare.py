"""`cli.py compare` against hand-checked statistics: Welch's t, its degrees of freedom and a
p-value found by integrating Student's t density here (Simpson's rule, no scipy), grouping by
configuration without the seed, the refusals, and a real pair of tiny sweeps."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import orjson
import pytest

from yocto_fn import cli, fileio
from yocto_fn.config import TrainConfig
from yocto_fn.run import compare, metrics

SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "tie_weights": False,
         "vocab_size": 77, "bias": True, "dropout": 0.0}  # fmt: skip


def fake_run(path: Path, seed: int, best: float, *, optimizer: str = "adamw",
             lr: float = 3e-3, steps: tuple[int, ...] = (10, 20),
             corpus: str = "philosophy.txt", loss_over: str = "all tokens") -> Path:  # fmt: skip
    """A run directory as train leaves it: run_meta.json and a metrics.csv whose val loss
    falls to `best` at the last evaluation."""
    flags = TrainConfig(seed=seed, lr=lr, optimizer=optimizer, ckpt_dir=path).to_dict()
    meta = {"train_config": flags, "model_config": SHAPE, "arch": "gpt-fast",
            "optimizer": {"name": optimizer, "schedule": "cosine"},
            "amp": {"flag": "off", "autocast": "fp32"},
            "data": {"corpus": corpus, "train_tokens": 1000, "val_tokens": 100,
                     "loss_over": loss_over}}  # fmt: skip
    path.mkdir(parents=True)
    fileio.atomic_write_bytes(path / "run_meta.json", fileio.json_bytes(meta))
    rows = [{"iter": it, "val_loss": best + (len(steps) - 1 - i), "best_val_loss": best
             + (len(steps) - 1 - i), "tokens_seen": 0} for i, it in enumerate(steps)]  # fmt: skip
    metrics.write(path / "metrics.csv", rows)
    return path


def t_p_value(t: float, df: float, n: int = 20_000) -> float:
    """Two-sided p of Student's t: 1 - 2 * integral of the density over [0, |t|]."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = abs(t) / n
    simpson = pdf(0) + pdf(abs(t)) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 1 - 2 * simpson * h / 3


def test_welch_matches_a_hand_checked_case(tmp_path, capsys):
    # a = 1..5 (mean 3, var 2.5), b = 2, 4, .., 10 (mean 6, var 10): se^2 = 0.5 + 2 = 2.5,
    # t = -3 / sqrt(2.5), df = 2.5^2 / (0.5^2 / 4 + 2^2 / 4) = 6.25 / 1.0625
    a = [fake_run(tmp_path / f"a{s}", s, float(s)) for s in range(1, 6)]
    b = [fake_run(tmp_path / f"b{s}", s, 2.0 * s, optimizer="muon") for s in range(1, 6)]
    out = tmp_path / "cmp"
    assert cli.main(["compare", *map(str, a + b), "--out", str(out)]) == 0
    result = orjson.loads((out / "compare.json").read_bytes())
    ga, gb = result["groups"]
    assert (ga["n"], ga["mean"], ga["sd"]) == (5, pytest.approx(3), pytest.approx(math.sqrt(2.5)))
    assert (gb["n"], gb["mean"], gb["sd"]) == (5, pytest.approx(6), pytest.approx(math.sqrt(10)))
    (test,) = result["tests"]
    t, df = -3 / math.sqrt(2.5), 6.25 / 1.0625
    assert test["t"] == pytest.approx(t, rel=1e-12)
    assert test["df"] == pytest.approx(df, rel=1e-12)
    assert test["p"] == pytest.approx(t_p_value(t, df), abs=1e-9)
    assert 0.10 < test["p"] < 0.11
    assert test["diff"] == pytest.approx(-3)
    assert test["cohen_d"] == pytest.approx(-3 / math.sqrt((2.5 + 10) / 2))
    low, high = test["ci95"]
    assert low < -3 < high and (low + high) / 2 == pytest.approx(-3)
    printed = capsys.readouterr().out
    assert "optimizer adamw" in printed and "optimizer muon" in printed
    assert f"p = {t_p_value(t, df):.2g}" in printed and "A is lower" in printed


def test_chat_runs_compare_their_assistant_token_loss_and_never_mix_with_plain(tmp_path, capsys):
    chat = [
        fake_run(
            tmp_path / f"c{s}{o}", s, s + (o == "muon"), optimizer=o, loss_over="assistant tokens"
        )
        for s in (1, 2)
        for o in ("adamw", "muon")
    ]
    assert cli.main(["compare", *map(str, chat), "--out", str(tmp_path / "cmp")]) == 0
    assert "val_loss over assistant tokens mean" in capsys.readouterr().out
    result = orjson.loads((tmp_path / "cmp" / "compare.json").read_bytes())
    assert result["data"]["loss_over"] == "assistant tokens"
    plain = fake_run(tmp_path / "plain", 3, 1.0)
    assert cli.main(["compare", *map(str, chat), str(plain), "--out", str(tmp_path / "no")]) == 2
    assert "measure val loss on different data (loss_over" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_groups_ignore_seed_and_place_and_label_by_what_differs(tmp_path):
    runs = [fake_run(tmp_path / "s" / f"member-{i:02d}", i, 1.0 + 0.1 * i, lr=lr)
            for i, lr in enumerate([1e-3, 1e-3, 3e-3, 3e-3])]  # fmt: skip
    fileio.atomic_write_bytes(tmp_path / "s" / "sweep.json", b"{}")
    loaded = compare.load_runs((tmp_path / "s",), "best_val_loss")
    assert [r.path for r in loaded] == runs
    groups = compare.group_runs(loaded)
    assert [g.label for g in groups] == ["lr 0.001", "lr 0.003"]
    assert [g.values for g in groups] == [pytest.approx([1.0, 1.1]), pytest.approx([1.2, 1.3])]


def test_final_val_loss_is_the_last_evaluation(tmp_path):
    run = fake_run(tmp_path / "r", 0, 2.0, steps=(10, 20, 30))
    rows = metrics.read(run / "metrics.csv")
    rows[-1]["val_loss"] = 2.5  # above the best: final and best differ
    metrics.write(run / "metrics.csv", rows)
    assert compare.read_run(run, "final_val_loss").value == pytest.approx(2.5)
    assert compare.read_run(run, "best_val_loss").value == pytest.approx(2.0)


REFUSALS = {
    "has 1 seed": lambda w: [fake_run(w / "a0", 0, 1.0), fake_run(w / "a1", 1, 1.1),
                             fake_run(w / "b0", 0, 1.0, optimizer="muon")],
    "nothing to compare": lambda w: [fake_run(w / "a0", 0, 1.0), fake_run(w / "a1", 1, 1.1)],
    "different data (corpus": lambda w: [
        fake_run(w / "a0", 0, 1.0), fake_run(w / "a1", 1, 1.1),
        fake_run(w / "b0", 0, 1.0, optimizer="muon", corpus="other.txt"),
        fake_run(w / "b1", 1, 1.0, optimizer="muon", corpus="other.txt")],
    "same configuration and seed 0": lambda w: [
        fake_run(w / "a0", 0, 1.0), fake_run(w / "a1", 0, 1.1),
        fake_run(w / "b0", 0, 1.0, optimizer="muon"), fake_run(w / "b1", 1, 1.0, optimizer="muon")],
    "ends at step 10, others of group A at 20": lambda w: [
        fake_run(w / "a0", 0, 1.0, steps=(10,)), fake_run(w / "a1", 1, 1.1),
        fake_run(w / "b0", 0, 1.0, optimizer="muon"), fake_run(w / "b1", 1, 1.0, optimizer="muon")],
    "given twice": lambda w: [fake_run(w / "a0", 0, 1.0)] * 2,
    "holds neither run_meta.json": lambda w: [w],
    "does not exist": lambda w: [w / "missing"],
}  # fmt: skip


@pytest.mark.parametrize("expected", list(REFUSALS))
def test_refusals_are_one_line_exit_2_and_write_nothing(expected, tmp_path, capsys):
    paths = REFUSALS[expected](tmp_path)
    out = tmp_path / "cmp"
    assert cli.main(["compare", *map(str, paths), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_a_diverged_or_unevaluated_run_is_refused(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0, 1.0)
    b = fake_run(tmp_path / "b", 1, 1.0)
    metrics.write(b / "metrics.csv", [{"iter": 10, "val_loss": math.nan, "tokens_seen": 0}])
    assert cli.main(["compare", str(a), str(b)]) == 2
    assert "metrics.csv has no evaluated val loss" in capsys.readouterr().err
    rows = [{"iter": 10, "val_loss": math.inf, "best_val_loss": math.inf, "tokens_seen": 0}]
    metrics.write(b / "metrics.csv", rows)
    assert cli.main(["compare", str(a), str(b)]) == 2
    assert "best_val_loss is inf (the run diverged)" in capsys.readouterr().err


def test_two_real_sweeps_compare_end_to_end(char_dir, tmp_path, capsys):
    flags = ["--data-dir", str(char_dir), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--block-size", "16", "--batch-size", "4", "--max-iters", "20", "--eval-interval",
             "10", "--eval-iters", "2", "--device", "cpu", "--amp", "off", "--lrs", "3e-3",
             "--seeds", "0", "1", "2"]  # fmt: skip
    for opt in ("adamw", "muon"):
        sweep = ["sweep", *flags, "--optimizer", opt, "--out-dir", str(tmp_path / opt)]
        assert cli.main(sweep) == 0
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "adamw"), str(tmp_path / "muon"), "--out", str(out)]
    assert cli.main([*argv, "--metric", "final_val_loss"]) == 0
    result = orjson.loads((out / "compare.json").read_bytes())
    assert [(g["label"], g["n"]) for g in result["groups"]] == [("optimizer adamw", 3),
                                                                ("optimizer muon", 3)]  # fmt: skip
    for g, opt in zip(result["groups"], ("adamw", "muon"), strict=True):
        last = [metrics.read(tmp_path / opt / f"member-{i:02d}" / "metrics.csv")[-1]["val_loss"]
                for i in range(3)]  # fmt: skip
        assert [r["final_val_loss"] for r in g["runs"]] == pytest.approx(last)
        assert [r["seed"] for r in g["runs"]] == [0, 1, 2]
    image = matplotlib.image.imread(out / "compare.png")
    assert image.shape[:2] == (500, 800) and image[..., :3].std() > 0.05
    assert "Welch's t-test" in capsys.readouterr().out


def test_missing_scipy_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)
    assert cli.main(["compare", str(tmp_path)]) == 2
    assert "pip install -e '.[research]'" in capsys.readouterr().err
