"""Every command in README.md and in docs/ runs: the docs cannot drift from the code.

The fenced `bash` blocks of the README, then of the docs pages in the order of the site's
navigation (mkdocs.yml), are executed in order in a scratch directory, with settings that
keep them fast: a few training steps, a few sampled tokens, no compilation (the compiled
paths have their own tests). `make` targets and the GPU set-up script are checked for
existence and syntax; the benchmarks' lines are parsed, and the GPU suite's CPU dry run runs
cut to its quick sections.
"""

import contextlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import real_text

from yocto_fn import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def doc_pages() -> list[Path]:
    """docs/ pages in the navigation's order (mkdocs.yml), every page listed once."""
    nav = re.findall(r"^\s*- (?:[^:]+: )?([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    return [ROOT / "docs" / name for name in nav]


DOCS = "\n".join(page.read_text(encoding="utf-8") for page in doc_pages())

FAST = {
    "train": ["--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--batch-size", "2"],
    "sweep": ["--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--batch-size", "2"],
    "sample": ["--max-new-tokens", "8", "--num-samples", "1"],
    "chat": ["--max-new-tokens", "8"],
    "analyze": ["--batches", "1", "--iters", "3", "--samples", "2", "--steps", "3"],
    "smoke-cpu": ["--new-tokens", "8"],
    "smoke-train": ["--iters", "40"],
}
PARSE_ONLY = {"bench"}


def blocks(language: str) -> list[str]:
    """The fenced blocks in `language` of the README, then of the docs pages."""
    return re.findall(rf"```{language}\n(.*?)```", README + "\n" + DOCS, flags=re.S)


def uses_transformers(code: str) -> bool:
    """The snippets that load an export in transformers: they need the commands' outputs."""
    return "from transformers" in code


def uses_server(code: str) -> bool:
    """The snippets that talk to `cli.py serve`: they run while the README's server is up."""
    return "from openai" in code


def at_port(text: str, port: int) -> str:
    """The README's server addresses pointed at the test's own port."""
    return re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", text)


@contextlib.contextmanager
def serving(argv: list[str]):
    """`cli.py serve` as its own process on a free port; on leaving, SIGTERM and exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if "--port" in argv:
        argv = argv[: argv.index("--port")] + argv[argv.index("--port") + 2 :]
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *argv, "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"serve exited: {proc.stderr.read()[-1000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        yield port
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def commands() -> list[list[str]]:
    """Shell commands of the bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def test_readme_has_the_two_setup_commands():
    first = commands()[:2]
    assert first == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = real_text()[:60_000]
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(text[:30_000], encoding="utf-8")
    (tmp_path / "texts" / "b.txt").write_text(text[30_000:], encoding="utf-8")
    ran = set()
    server = contextlib.ExitStack()
    port = None
    for words in commands():
        if words[0] == "make":
            continue
        if words[0] == "bash":
            subprocess.run(["bash", "-n", str(ROOT / words[1])], check=True)
            continue
        if words[0] == "curl":
            if shutil.which("curl") is None:
                continue
            done = subprocess.run([at_port(w, port) for w in words], capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0 and "choices" in json.loads(done.stdout), done.stdout
            ran.add("curl")
            continue
        if words[0] == "torchrun":  # multi-GPU launch lines: their train flags must parse
            cli.parse(cli.amp_switches(words[words.index("cli.py") + 1 :]))
            continue
        if words[:3] == [".venv/bin/python", "-m", "benchmarks"]:
            from benchmarks import __main__ as benchmarks

            if len(words) == 3:  # the list
                assert benchmarks.main([]) == 0
                continue
            cfg = benchmarks.parse(words[3:])  # every line's flags parse
            if words[3] == "gpu-suite" and cfg.device == "cpu":  # the dry run, cut short
                quick = ["--no-compile", "--rounds", "1", "--sections", "env", "adamw"]
                assert benchmarks.main([*words[3:], *quick, "--out", str(tmp_path / "gpu")]) == 0
                ran.add("gpu-suite")
            continue
        assert words[:2] == [".venv/bin/python", "cli.py"], f"unexpected command {words}"
        argv = words[2:]
        sub = argv[0]
        if sub in PARSE_ONLY:
            cli.parse(argv)
            continue
        argv = [a for a in argv if a != "--compile"] + FAST.get(sub, [])
        if sub == "serve":  # up until the end, for the curl and client lines after it
            server.close()
            port = server.enter_context(serving(argv))
            for code in (c for c in blocks("python") if uses_server(c)):
                exec(compile(at_port(code, port), "README.md", "exec"), {})
            ran.add(sub)
            continue
        if sub == "chat":
            monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nwhat is a list?\n"))
        status = cli.main(argv)
        out, err = capsys.readouterr()
        assert status == 0, f"{shlex.join(words)} exited {status}: {err[-500:]}"
        ran.add(sub)
    server.close()
    assert ran >= {"prepare-char", "prepare-tokenizer", "prepare-chat", "train", "sweep", "sample",
                   "chat", "serve", "recommend", "smoke-cpu", "smoke-train", "export", "import",
                   "compare", "analyze", "gpu-suite"}  # fmt: skip
    snippets = [code for code in blocks("python") if uses_transformers(code)]
    assert snippets
    if importlib.util.find_spec("transformers") is not None:  # the `interop` extra
        for code in snippets:
            exec(compile(code, "README.md", "exec"), {})
        assert "Q: What is a list?" in capsys.readouterr().out


def test_readme_python_blocks_run():
    """The python blocks run in order, in one namespace, as a reader would paste them."""
    namespace: dict = {}
    for code in blocks("python"):
        if uses_transformers(code) or uses_server(code):
            continue
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (4, 64, 96)
    assert namespace["member_logits"].shape == (2, 4, 64, 96)
    assert namespace["ensemble_logits"].shape == (3, 4, 64, 96)
    assert namespace["member_metrics"]["loss"].shape == (3,)
    assert namespace["norms"].shape == (4,) and namespace["clipped"]["wte"].shape == (96, 64)


def test_the_calibration_script_shows_help():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/recommend_grid.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0 and "--fit" in out.stdout, out.stderr
