"""The docs site: it builds with `mkdocs build --strict` (a broken page link or anchor fails
it), every link out of docs/ and out of the README points at a file that exists, every flag
the README and the docs name exists, and the README stays short. The commands in the docs'
blocks run in tests/test_readme.py."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import script

from yocto_fn import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # --quiet would hide warnings


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "-f", str(config), "-d", str(site)], capture_output=True,
                          text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1",
                                                       "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_the_site_builds_strict_and_a_broken_anchor_fails_it(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "train" / "index.html").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "train.md"
    page.write_text(page.read_text() + "\nSee [nowhere](gpu.md#no-such-heading).\n")
    broken = build(copy / "mkdocs.yml", tmp_path / "site2")
    assert broken.returncode != 0 and "no-such-heading" in broken.stdout + broken.stderr


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_link_to_a_file_points_at_one_that_exists(path):
    """mkdocs checks links between pages; links out of docs/ (results, source) and the
    README's links into docs/ are checked here, anchors included."""
    missing = []
    for target in links(path):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        file, _, anchor = target.partition("#")
        where = (path.parent / file).resolve()
        bad_anchor = anchor and where.suffix == ".md" and anchor not in anchors(where)
        if not where.exists() or bad_anchor:
            missing.append(target)
    assert missing == []


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings, made as the site's table of contents makes them."""
    from markdown.extensions.toc import slugify

    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slugify(line.lstrip("#").strip().replace("`", ""), "-")
            for line in text.splitlines() if line.startswith("#")}  # fmt: skip


def test_the_readme_is_short_and_links_every_task_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 15_000
    linked = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    tasks = ["data", "train", "sweep-and-compare", "sample-and-chat", "serve", "recommend",
             "interop", "distributed", "gpu", "api", "design", "benchmarks", "testing",
             "troubleshooting"]  # fmt: skip
    assert {f"docs/{t}.md" for t in tasks} <= linked


def known_flags() -> set[str]:
    """Every flag of every subcommand, of every benchmark, and of the calibration script."""
    from benchmarks.__main__ import BENCHMARKS

    configs = [cls for cls, _ in [*cli.COMMANDS.values(), *BENCHMARKS.values()]]
    flags = set().union(*(cli.flag_names(cls) for cls in configs))
    flags |= set(cli.flag_names(script("recommend_grid").Config))
    return flags | set(cli.ALIASES)  # older spellings that keep working (--model-type)


# Flags of other programs the docs show (pip, pytest, torchrun, curl, make).
OTHERS = {"--no-deps", "--only-binary", "--python-version", "--implementation", "--platform",
          "--no-index", "--target", "--nproc-per-node", "--nnodes", "--node-rank",
          "--master-addr", "--master-port", "--standalone", "--rdzv-endpoint", "--rdzv-backend",
          "--help",
          "--no-build-isolation", "--durations", "--strict"}  # fmt: skip


def test_every_flag_the_docs_name_exists():
    text = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *PAGES])
    text = re.sub(r"## Bad input\n.*?(?=\n## |\Z)", "", text, flags=re.S)  # wrong on purpose
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))
    named = {f.replace("_", "-") for f in named}
    known = {f.replace("_", "-") for f in known_flags()} | OTHERS
    known |= {f"--no-{f[2:]}" for f in known}  # tyro's negated switches
    assert sorted(named - known) == []


def test_the_bad_input_table_is_the_tests_cases():
    from test_bad_input import CASES

    text = (DOCS / "testing.md").read_text(encoding="utf-8").split("## Bad input", 1)[1]
    rows = re.findall(r"^\| `(.*)` \| (.*) \|$", text, re.M)
    assert [(argv, said.replace("\\|", "|")) for argv, said in rows] == list(CASES)
