"""The library's layers: every import of yocto_fn runs downward or within its own layer, the
CLI (`yocto_fn.cli`) sits on top and no module imports it, no module imports the
repository's benchmarks, and no modules import each other in a circle. Read from the source
(every import statement, those inside functions too), so the rule cannot drift."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "yocto_fn"
# From the ground up; the ground is the package's own top-level modules, but the CLI.
ORDER = ["", "core", "formats", "data", "generate", "plan", "run", "bench", "cli"]
CLI = "yocto_fn.cli"
# The imports the rule reads, besides the CLI: the package's own and the repository's benchmarks.
WATCHED = ("yocto_fn", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """'' for the ground (yocto_fn.config, ...), 'cli' for the CLI, else the folder under
    yocto_fn."""
    if module == CLI:
        return "cli"
    parts = module.split(".")
    if len(parts) < 2 or (PKG / f"{parts[1]}.py").is_file():
        return ""
    return parts[1]


def imports(path: Path) -> list[tuple[str, int]]:
    """Modules `path` imports (absolute, dotted) with their line: `from . import x` names the
    module x where x is one, else the package."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                candidate = f"{source}.{a.name}"
                found = resolve(candidate)
                out.append((found or source, node.lineno))
    return [(m, line) for m, line in out if m == "cli" or m.split(".")[0] in WATCHED]


def resolve(module: str) -> str | None:
    """`module` when it is a module or package of yocto_fn, else None."""
    parts = module.split(".")
    if parts[0] != "yocto_fn":
        return None
    path = PKG.parent.joinpath(*parts)
    return module if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() else None


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def upward(g: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for module, deps in g.items():
        if module == "yocto_fn":  # the package's face re-exports from every layer
            continue
        mine = ORDER.index(layer_of(module))
        for dep, line in deps:
            if dep in ("cli", CLI):
                bad.append(f"{module}:{line} imports the CLI")
            elif dep.split(".")[0] == "benchmarks":
                bad.append(f"{module}:{line} imports the benchmarks")
            elif dep != "yocto_fn" and ORDER.index(layer_of(dep)) > mine:
                bad.append(f"{module}:{line} imports {dep}, a layer above it")
            elif dep == "yocto_fn":
                bad.append(f"{module}:{line} imports the package's face (import the module)")
    return bad


def circles(g: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    edges = {m: {d for d, _ in deps if d in g and d != m} for m, deps in g.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_module_sits_in_a_known_layer():
    g = graph()
    assert {layer_of(m) for m in g} == set(ORDER)
    assert len(g) > 40


def test_imports_run_downward_only_and_never_to_the_cli():
    assert upward(graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("yocto_fn.core.optim", "from ..formats import checkpoint\n", "a layer above"),
        ("yocto_fn.data.char", "from ..generate.sample import generate\n", "a layer above"),
        ("yocto_fn.run.trainer", "import cli\n", "the CLI"),
        ("yocto_fn.core.rng", "from .. import models\n", "the package's face"),
        ("yocto_fn.run.trainer", "from ..bench import run\n", "a layer above"),
        ("yocto_fn.bench.run", "from benchmarks import gpu_suite\n", "the benchmarks"),
    ],
)
def test_the_rule_catches_an_upward_import(module, source, why):
    """The checks themselves: an added upward import is reported (checked on a copy)."""
    g = graph()
    path = PKG.parent.joinpath(*module.split(".")).with_suffix(".py")
    fake = path.with_name(f"_probe_{path.name}")
    fake.write_text(path.read_text() + source)
    try:
        g[module] = imports(fake)
    finally:
        fake.unlink()
    assert any(why in line for line in upward(g))


def test_a_circle_is_found():
    g = graph()
    g["yocto_fn.core.params"] = [*g["yocto_fn.core.params"], ("yocto_fn.core.train", 1)]
    assert any("yocto_fn.core.params" in c and "yocto_fn.core.train" in c for c in circles(g))


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_checkpoint_written_before_the_layers_loads_gives_its_logits_and_resumes(tmp_path):
    """`pre-layers-latest.pt` was written by the flat package (gpt-plus, Muon, 4 steps), with
    the logits that code gave for a fixed input: the layered package loads it to the same
    logits and resumes training from it."""
    import shutil

    import torch

    import cli
    from yocto_fn import models
    from yocto_fn.core.config import ModelConfig
    from yocto_fn.formats import checkpoint

    ckpt = checkpoint.load(FIXTURES / "pre-layers-latest.pt")
    want = torch.load(FIXTURES / "pre-layers-logits.pt", weights_only=True)
    cfg = ModelConfig(**ckpt["model_config"])
    logits, _ = models.get(ckpt["arch"]).forward(ckpt["params"], want["idx"], cfg)
    torch.testing.assert_close(logits, want["logits"], atol=1e-6, rtol=0)
    data, run = tmp_path / "data", tmp_path / "run"
    chars = ckpt["tokenizer"]["chars"]  # a corpus of the same characters: the same vocab
    words = ["".join(chars[(i + j) % len(chars)] for j in range(5)) for i in range(4000)]
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(words[i : i + 40]) for i in range(0, 4000, 40)))
    assert cli.main(["prepare-char", "--text-path", str(text), "--out-dir", str(data)]) == 0
    run.mkdir()
    shutil.copy(FIXTURES / "pre-layers-latest.pt", run / "latest.pt")
    argv = ["train", "--data-dir", str(data), "--resume", str(run / "latest.pt"), "--ckpt-dir",
            str(run), "--max-iters", "6", "--eval-interval", "2", "--eval-iters", "1",
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    assert checkpoint.load(run / "latest.pt")["iter"] == 4 + 6  # --max-iters more steps
