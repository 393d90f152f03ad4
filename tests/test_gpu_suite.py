"""The prepared GPU run (`benchmarks/gpu_suite.py`), dry-run on the CPU at tiny sizes: its
figures and checks are recorded, a failing section is a recorded result that does not end
the run, and the budget skips what no longer fits."""

import orjson
import pytest
import torch

from benchmarks import gpu_suite

EAGER = ["--device", "cpu", "--tiny", "--no-compile", "--rounds", "1"]


def read(out):
    lines = (out / "suite.jsonl").read_bytes().splitlines()
    return orjson.loads(lines[0]), [orjson.loads(line) for line in lines[1:]]


def test_eager_sections_record_figures_goals_and_checks(tmp_path):
    argv = [*EAGER, "--sections", "env", "train-eager", "adamw", "decode", "--out", str(tmp_path)]
    assert gpu_suite.main(argv) == 0
    header, records = read(tmp_path)
    assert header["tiny"] and header["torch"] == torch.__version__
    assert header["command"].endswith(" ".join(argv))
    by_name = {(r["section"], r["name"]): r for r in records}
    train = [r for r in records if r["section"] == "train-eager" and r["unit"] == "tokens/s"]
    assert len(train) == 6 and all(r["value"] > 0 and r["mfu"] > 0 for r in train)
    assert all(r["min"] <= r["value"] <= r["max"] for r in train)
    goal = by_name["goals", "gpt-fast eager fp32 / reference eager fp32 (goal >= 0.95)"]
    ours = by_name["train-eager", "gpt-fast eager fp32"]["value"]
    ref = by_name["train-eager", "reference eager fp32, foreach AdamW"]["value"]
    assert goal["value"] == pytest.approx(ours / ref)
    assert by_name["adamw", "functional fused: launches"]["unit"] == "aten ops"
    assert by_name["adamw", "torch.optim fused: launches"]["value"] <= 4
    decode = [r for r in records if r["section"] == "decode" and r["unit"] == "tokens/s"]
    assert {r["name"] for r in decode} == {"gpt-fast no cache", "gpt-fast cache",
                                           "reference no cache"}  # fmt: skip
    assert all(r.get("ok") is not False for r in records)
    md = (tmp_path / "suite.md").read_text()
    assert "## goals" in md and "## train-eager" in md and "MFU" in md


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def broken(suite):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setitem(gpu_suite.RUNNERS, "env", broken)
    argv = [*EAGER, "--sections", "env", "adamw", "--out", str(tmp_path)]
    assert gpu_suite.main(argv) == 1
    _, records = read(tmp_path)
    walls = {r["section"]: r for r in records if r["name"] == "section wall time"}
    assert walls["env"]["ok"] is False and walls["env"]["error"] == "RuntimeError: kernel exploded"
    assert walls["adamw"]["ok"] is True


def test_a_crash_in_the_packaged_step_child_is_a_failed_check_not_the_end(tmp_path, monkeypatch):
    """The packaged step's load once crashed the whole process on CUDA: the suite runs it in a
    child, so a crash there is recorded with its exit status and the sections after it run."""
    monkeypatch.setattr(gpu_suite, "AOT_CHILD", "import os; os.abort()")
    argv = [*EAGER, "--sections", "aot", "adamw", "--out", str(tmp_path)]
    assert gpu_suite.main(argv) == 1
    _, records = read(tmp_path)
    crash = next(r for r in records if r["name"] == "package build + load")
    assert crash["ok"] is False and crash["error"].startswith("exit -6")
    assert any(r["section"] == "adamw" and r.get("ok") for r in records)


def test_sections_past_the_budget_are_skipped_not_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setitem(gpu_suite.RUNNERS, "env", lambda s: ran.append("env"))
    argv = [*EAGER, "--sections", "env", "gpt2-muon", "--budget-s", "-1", "--out", str(tmp_path)]
    assert gpu_suite.main(argv) == 0
    _, records = read(tmp_path)
    assert not ran and [r["section"] for r in records] == ["env", "gpt2-muon"]
    assert all(r["note"].startswith("skipped: past --budget-s") for r in records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for hosts without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert gpu_suite.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
    assert not (tmp_path / "suite.jsonl").exists()


@pytest.mark.slow
def test_the_whole_dry_run_passes(tmp_path):
    """Every section, compiled contenders and the CLI included (about 7 minutes on 2 cores)."""
    assert gpu_suite.main(["--device", "cpu", "--tiny", "--budget-s", "3600",
                           "--out", str(tmp_path)]) == 0  # fmt: skip
    _, records = read(tmp_path)
    checks = [r for r in records if r["section"] == "checks"]
    assert checks and all(r["ok"] for r in checks)
    cli = [r for r in records if r["section"] == "cli"]
    assert len(cli) == 7 and all(r["ok"] for r in cli)
    assert {r["name"] for r in records if r["section"] == "aot"} >= {
        "package build",
        "package load",
    }
