"""`cli.py sweep`: members equal `train` runs, their files, both resumes and bad grids."""

import csv
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY, ckpt

from yocto_fn import cli
from yocto_fn.core.params import max_abs_diff
from yocto_fn.plan import recommend

# Dropout, accumulation and a warmup/cosine schedule: every per-member part of a step is used.
SHARED = (
    *TINY, "--batch-size", "2", "--grad-accum-steps", "2", "--eval-iters", "2",
    "--eval-interval", "2", "--max-iters", "4", "--dropout", "0.2", "--cosine-lr",
    "--warmup-iters", "2", "--min-lr", "1e-4", "--model", "gpt-plus", "--device", "cpu",
    "--optimizer", "adamw",
)  # fmt: skip
GRID = ("--lrs", "1e-3", "4e-3", "--seeds", "7", "--weight-decays", "0.05")


@pytest.fixture(scope="module")
def swept(char_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), *SHARED, *GRID]
    assert cli.main(argv) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_every_member_and_a_ranked_summary(swept):
    summary = read_csv(swept / "summary.csv")
    assert sorted(int(r["member"]) for r in summary) == [0, 1]
    assert [r["rank"] for r in summary] == ["1", "2"]
    assert float(summary[0]["best_val_loss"]) <= float(summary[1]["best_val_loss"])
    for r in summary:
        member = swept / f"member-{int(r['member']):02d}"
        rows = read_csv(member / "metrics.csv")
        assert [row["iter"] for row in rows] == ["2", "4"]
        assert r["best_val_loss"] == min(rows, key=lambda x: float(x["val_loss"]))["val_loss"]
        assert r["final_val_loss"] == rows[-1]["val_loss"]
        best = ckpt(member / "best.pt")
        assert f"{best['best_val_loss']:.6g}" == r["best_val_loss"]
        assert {p.name for p in member.iterdir()} >= {"latest.pt", "best.pt", "loss.png",
                                                      "run_meta.json"}  # fmt: skip
    assert (swept / "val_curves.png").stat().st_size > 0 and (swept / "sweep.json").is_file()


def test_member_equals_a_train_run(swept, char_dir, tmp_path):
    """Member 1 (lr 4e-3, seed 7, wd 0.05) is `train` with those flags: weights and metrics."""
    argv = ["train", "--data-dir", str(char_dir), "--ckpt-dir", str(tmp_path), *SHARED]
    assert cli.main([*argv, "--lr", "4e-3", "--seed", "7", "--weight-decay", "0.05"]) == 0
    ran, member = ckpt(tmp_path / "latest.pt"), ckpt(swept / "member-01" / "latest.pt")
    assert member["iter"] == ran["iter"] == 4
    assert max_abs_diff(ran["params"], member["params"]) < 1e-5
    assert max_abs_diff(ran["opt_state"]["state"], member["opt_state"]["state"]) < 1e-5
    assert torch.equal(ran["rng"]["data"], member["rng"]["data"])
    cols = ("iter", "lr", "tokens_seen")
    a, b = read_csv(tmp_path / "metrics.csv"), read_csv(swept / "member-01" / "metrics.csv")
    assert [{k: r[k] for k in cols} for r in a] == [{k: r[k] for k in cols} for r in b]
    for x, y in zip(a, b, strict=True):
        assert float(x["val_loss"]) == pytest.approx(float(y["val_loss"]), abs=1e-4)
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), abs=1e-4)
    config = member["train_config"]
    assert (config["lr"], config["seed"], config["weight_decay"]) == (4e-3, 7, 0.05)


def test_muon_member_equals_a_train_run(char_dir, tmp_path):
    """A Muon grid (--lrs x --muon-lrs, WSD): member 1 is `train` with its two rates."""
    shared = (*SHARED[:-2], "--optimizer", "muon", "--schedule", "wsd", "--decay-fraction", "0.5")
    shared = tuple(f for f in shared if f != "--cosine-lr")
    out = tmp_path / "s"
    grid = ("--lrs", "2e-3", "--muon-lrs", "0.01", "0.04", "--seeds", "7")
    assert (
        cli.main(["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), *shared, *grid]) == 0
    )
    argv = ["train", "--data-dir", str(char_dir), "--ckpt-dir", str(tmp_path / "t"), *shared]
    assert cli.main([*argv, "--lr", "2e-3", "--muon-lr", "0.04", "--seed", "7"]) == 0
    ran, member = ckpt(tmp_path / "t" / "latest.pt"), ckpt(out / "member-01" / "latest.pt")
    assert max_abs_diff(ran["params"], member["params"]) < 1e-5
    assert max_abs_diff(ran["opt_state"]["state"], member["opt_state"]["state"]) < 1e-5
    assert member["train_config"]["muon_lr"] == 0.04
    summary = read_csv(out / "summary.csv")
    assert sorted(float(r["muon_lr"]) for r in summary) == [0.01, 0.04]


def test_member_best_checkpoint_samples(swept, capsys):
    capsys.readouterr()
    best = str(swept / "member-00" / "best.pt")
    assert cli.main(["sample", "--ckpt", best, "--max-new-tokens", "8", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()


def test_train_resumes_a_member(swept, char_dir, tmp_path):
    member = tmp_path / "m"
    shutil.copytree(swept / "member-00", member)
    argv = ["train", "--data-dir", str(char_dir), "--ckpt-dir", str(member), *SHARED, "--lr",
            "1e-3", "--seed", "7", "--resume", str(member / "latest.pt")]  # fmt: skip
    assert cli.main(argv) == 0
    assert ckpt(member / "latest.pt")["iter"] == 8
    assert [r["iter"] for r in read_csv(member / "metrics.csv")] == ["2", "4", "6", "8"]


def test_sweep_resume_continues_every_member(swept, tmp_path, capsys):
    out = tmp_path / "s"
    shutil.copytree(swept, out)
    capsys.readouterr()
    assert cli.main(["sweep", "--resume", str(out), "--max-iters", "2"]) == 0
    assert "member-01" in capsys.readouterr().out
    for i in (0, 1):
        assert ckpt(out / f"member-{i:02d}" / "latest.pt")["iter"] == 6
        iters = [r["iter"] for r in read_csv(out / f"member-{i:02d}" / "metrics.csv")]
        assert iters == ["2", "4", "6"]
    assert cli.main(["sweep", "--resume", str(out), "--n-layer", "3"]) == 2
    assert "contradict" in capsys.readouterr().err


BAD_GRIDS = [
    (("--lrs",), "--lrs needs at least one value"),
    (("--lrs", "1e-3", "--seeds"), "--seeds needs at least one value"),
    (("--lrs", "0"), "--lrs must all be positive"),
    (("--lrs", "-1e-3"), "--lrs must all be positive"),
    (("--lrs", "1e-3", "--weight-decays", "-0.1"), ">= 0"),
    (("--lrs", "1e-3", "1e-3"), "twice"),
    (("--lrs", *[f"{i}e-4" for i in range(1, 10)], "--seeds", *map(str, range(8))), "at most 64"),
    (("--lrs", "1e-3", "--optimizer", "adamw", "--muon-lrs", "0.01", "0.03"), "--optimizer muon"),
    (
        ("--lrs", "1e-3", "--optimizer", "muon", "--muon-lrs", "0"),
        "--muon-lrs must all be positive",
    ),
    (("--lrs", "1e-3", "--optimizer", "muon", "--muon-momentum", "2"), "--muon-momentum"),
]


@pytest.mark.parametrize("grid, needle", BAD_GRIDS)
def test_bad_grid_is_one_line_and_writes_nothing(char_dir, tmp_path, capsys, grid, needle):
    out = tmp_path / "s"
    capsys.readouterr()
    assert cli.main(["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), *TINY,
                     "--device", "cpu", *grid]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_grid_too_large_for_memory_is_refused(char_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(recommend, "device_memory_gb", lambda device: 1e-5)  # 10 KiB
    out = tmp_path / "s"
    capsys.readouterr()
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), *SHARED, *GRID]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "GiB" in err and "\n" not in err and not out.exists()


def test_existing_sweep_is_not_overwritten(swept, char_dir, capsys):
    before = (swept / "sweep.json").read_bytes()
    capsys.readouterr()
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(swept), *SHARED, *GRID]
    assert cli.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert (swept / "sweep.json").read_bytes() == before


def test_ctrl_c_saves_every_member_and_prints_the_resume_command(
    char_dir, tmp_path, monkeypatch, capsys
):
    from yocto_fn.run.sweep import Sweep

    original = Sweep.train_step

    def step_then_interrupt(self, it, end):
        out = original(self, it, end)
        if it == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Sweep, "train_step", step_then_interrupt)
    out = tmp_path / "s"
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), *SHARED, *GRID]
    assert cli.main([*argv, "--max-iters", "100", "--eval-interval", "50"]) == 0
    assert f"--resume {out}" in capsys.readouterr().out
    for i in (0, 1):
        assert ckpt(out / f"member-{i:02d}" / "latest.pt")["iter"] == 3
    assert (out / "sweep.json").is_file()


def test_amp_auto_times_the_sweeps_own_ensemble_step(char_dir, tmp_path, monkeypatch):
    """A sweep's auto verdict is timed on its ensemble step (all members, with
    accumulation), and every member's run_meta.json records it."""
    import json

    from yocto_fn.plan import probe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    timed = []
    rates = {"fp32": 500.0, "bf16": 800.0}
    monkeypatch.setattr(probe, "amp_rates", lambda spec, dev: timed.append(spec) or rates)
    out = tmp_path / "sweep"
    argv = ["sweep", "--data-dir", str(char_dir), *SHARED, *GRID, "--max-iters", "1",
            "--out-dir", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    (spec,) = timed
    assert (spec.members, spec.accum, spec.batch) == (2, 2, 2)
    for i in range(2):
        meta = json.loads((out / f"member-{i:02d}" / "run_meta.json").read_text())
        assert meta["dtype"] == "autocast bfloat16" and meta["amp"]["choice"] == "bf16"
        assert meta["amp"]["tokens_per_sec"] == rates


def test_the_amp_probe_times_both_dtypes_on_real_steps():
    """Rates come from real steps of one model, with accumulation, and of an ensemble."""
    from conftest import REAL_AMP_RATES, tiny_config

    from yocto_fn.plan import probe

    cpu = torch.device("cpu")
    for spec in (probe.StepSpec("gpt-fast", tiny_config(), 2, accum=2),
                 probe.StepSpec("gpt", tiny_config(), 2, members=3)):  # fmt: skip
        rates = REAL_AMP_RATES(spec, cpu)
        assert set(rates) == {"fp32", "bf16"} and all(r > spec.tokens for r in rates.values())
    assert probe.StepSpec("gpt", tiny_config(), 2, members=3).tokens == 3 * 2 * 16
