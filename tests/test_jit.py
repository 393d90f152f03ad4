"""The compile entry point: GCC gets the flag that keeps Inductor's bf16 CPU kernels right."""

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor

from yocto_fn import jit, models, optim
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.train import make_train_step

GCC = shutil.which("g++")


@pytest.mark.skipif(GCC is None or not jit._is_gcc(GCC), reason="needs GCC as g++")
def test_gcc_is_wrapped_with_the_flag_and_the_wrapper_compiles(tmp_path, monkeypatch):
    monkeypatch.setattr(jit, "_checked", False)
    monkeypatch.setattr(jit, "_wrapped", None)
    with inductor.patch({"cpp.cxx": (None, "g++")}):
        jit.use_safe_cxx()
        wrapper = inductor.cpp.cxx[-1]
        Path(wrapper).unlink()  # a cleared cache: the next compile writes it again
        jit.use_safe_cxx()
        assert inductor.cpp.cxx[-1] == wrapper and Path(wrapper).is_file()
    assert wrapper == str(jit.wrapper_dir() / "g++")
    script = Path(wrapper).read_text()
    assert jit.FLAG in script and GCC in script
    src = tmp_path / "a.cpp"
    src.write_text("int main() { return 0; }\n")
    out = subprocess.run([wrapper, "-O3", str(src), "-o", str(tmp_path / "a"), "-v"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and jit.FLAG in out.stderr  # the flag reached the compiler


def test_a_compiler_other_than_gcc_is_left_alone(monkeypatch):
    monkeypatch.setattr(jit, "_checked", False)
    monkeypatch.setattr(jit, "_wrapped", None)
    with inductor.patch({"cpp.cxx": (None, "no-such-compiler++")}):
        jit.use_safe_cxx()
        assert inductor.cpp.cxx == (None, "no-such-compiler++")


@pytest.mark.slow  # about 25-45 s on 2 cores
def test_compiled_bf16_step_gradients_are_finite_and_match_eager():
    """The shape at which GCC 12's -O3 turned the compiled bf16 backward NaN at once (one
    layer, n_embd 64, block 32, batch 32 on AVX-512): finite, and eager's gradient norm."""
    torch._dynamo.reset()
    jit.use_safe_cxx()  # the host's part: the core compiles with torch.compile alone
    cfg = ModelConfig(vocab_size=65, n_layer=1, n_head=4, n_embd=64, block_size=32)
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    x = torch.randint(0, 65, (32, 33), generator=torch.Generator().manual_seed(0))
    batch = (x[:, :-1], x[:, 1:])
    norms = {}
    for compiled in (False, True):
        tx = optim.adamw()
        step = make_train_step(m, cfg, tx, amp_dtype=torch.bfloat16, compile=compiled)
        _, _, metrics = step(p, tx.init(p), batch)
        norms[compiled] = metrics["grad_norm"].item()
    assert math.isfinite(norms[True]), norms
    assert norms[True] == pytest.approx(norms[False], rel=0.05)
