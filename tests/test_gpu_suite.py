"""The prepared GPU run (`python -m benchmarks gpu-suite`), dry-run on the CPU at tiny sizes:
its figures and checks are recorded, a failing section is a recorded result that does not end
the run, and the budget skips what no longer fits."""

import orjson
import pytest
import torch

from benchmarks import gpu_suite
from benchmarks.__main__ import main, parse

EAGER = ["gpu-suite", "--device", "cpu", "--tiny", "--no-compile", "--rounds", "1"]


def read(out):
    lines = (out / "suite.jsonl").read_bytes().splitlines()
    return orjson.loads(lines[0]), [orjson.loads(line) for line in lines[1:]]


def test_eager_sections_record_figures_goals_and_checks(tmp_path):
    argv = [*EAGER, "--sections", "env", "train-eager", "adamw", "decode", "--out", str(tmp_path)]
    assert main(argv) == 0
    header, records = read(tmp_path)
    assert header["tiny"] and header["torch"] == torch.__version__
    assert header["command"].startswith("python -m benchmarks gpu-suite ")
    assert parse(header["command"].split()[3:]) == parse(argv)
    by_name = {(r["section"], r["name"]): r for r in records}
    train = [r for r in records if r["section"] == "train-eager" and r["unit"] == "tokens/s"]
    variants = ("gpt", "gpt-plus", "gpt-fast", "reference")
    assert {r["name"] for r in train} == {f"{v} eager fp32" for v in variants}
    assert all(r["value"] > 0 and r["mfu"] > 0 for r in train)
    assert all(r["min"] <= r["value"] <= r["max"] for r in train)
    goal = by_name["goals", "gpt-fast eager fp32 / reference eager fp32 (goal >= 0.95)"]
    ours = by_name["train-eager", "gpt-fast eager fp32"]["value"]
    ref = by_name["train-eager", "reference eager fp32"]["value"]
    assert goal["value"] == pytest.approx(ours / ref)
    foreach = by_name["goals", "gpt-fast eager step, foreach AdamW / reference's (goal >= 0.95)"]
    ref_ms, ours_ms = (by_name["adamw", f"step {who} foreach: time"]["value"]
                       for who in ("reference", "gpt-fast"))  # fmt: skip
    assert foreach["value"] == pytest.approx(ref_ms / ours_ms)
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
    assert main(argv) == 1
    _, records = read(tmp_path)
    walls = {r["section"]: r for r in records if r["name"] == "section wall time"}
    assert walls["env"]["ok"] is False and walls["env"]["error"] == "RuntimeError: kernel exploded"
    assert walls["adamw"]["ok"] is True


def test_a_crash_in_the_packaged_step_child_is_a_failed_check_not_the_end(tmp_path, monkeypatch):
    """The packaged step is built and loaded in a child process, so a crash there (a load
    that aborts the process) is recorded with its exit status and the sections after it run."""
    monkeypatch.setattr(gpu_suite, "AOT_CHILD", "import os; os.abort()")
    argv = [*EAGER, "--sections", "aot", "adamw", "--out", str(tmp_path)]
    assert main(argv) == 1
    _, records = read(tmp_path)
    crash = next(r for r in records if r["name"] == "package build + load")
    assert crash["ok"] is False and crash["error"].startswith("exit -6")
    assert any(r["section"] == "adamw" and r.get("ok") for r in records)


def test_sections_past_the_budget_are_skipped_not_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setitem(gpu_suite.RUNNERS, "env", lambda s: ran.append("env"))
    argv = [*EAGER, "--sections", "env", "gpt2-muon", "--budget-s", "-1", "--out", str(tmp_path)]
    assert main(argv) == 0
    _, records = read(tmp_path)
    assert not ran and [r["section"] for r in records] == ["env", "gpt2-muon"]
    assert all(r["note"].startswith("skipped: past --budget-s") for r in records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for hosts without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    assert main(["gpu-suite", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
    assert not (tmp_path / "suite.jsonl").exists()


@pytest.mark.slow
def test_the_whole_dry_run_passes(tmp_path):
    """Every section, compiled contenders and the CLI included (about 7 minutes on 2 cores)."""
    assert main(["gpu-suite", "--device", "cpu", "--tiny", "--budget-s", "3600",
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
