"""Weight-only quantisation: the int8 rounding, the tree it makes, and forwards (eager and
the compiled one-row path) against a dequantised fp32 reference built by hand."""

import pytest
import torch
import torch.nn.functional as F
from conftest import VARIANTS, tiny_config

from yocto_fn import models, params
from yocto_fn.generate import products, steps
from yocto_fn.generate import quantize as quantize_module
from yocto_fn.generate.quantize import int8_rows, quantize
from yocto_fn.generate.sample import generate


def test_int8_rows_round_to_the_nearest_step_of_each_rows_scale():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    w[2] = 0.0  # an all-zero row must not divide by zero
    q, scale = int8_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    torch.testing.assert_close(scale[[0, 1]], w[[0, 1]].abs().amax(1) / 127)
    assert q.abs().max() == 127 and (q[2] == 0).all()
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


def _dequantised(q_tree):
    """The fp32 tree an int8 tree stands for, rebuilt by hand: q * scale per row."""

    def walk(tree):
        if isinstance(tree, list):
            return [walk(t) for t in tree]
        out = {}
        for name, leaf in tree.items():
            if isinstance(leaf, (dict, list)):
                out[name] = walk(leaf)
            elif name.endswith("_scale"):
                continue
            elif leaf.dtype == torch.int8:
                scale = tree[f"{name[:-2]}_scale" if name.endswith("_w") else f"{name}_scale"]
                out[name] = leaf.float() * scale[:, None]
            else:
                out[name] = leaf
        return out

    return walk(q_tree)


@pytest.mark.parametrize("name", VARIANTS)
def test_int8_tree_and_forward_match_the_dequantised_weights(name):
    cfg = tiny_config(tie_weights=name == "gpt")
    model = models.get(name)
    p = model.init(cfg, 0)
    before = params.clone(p)
    q = quantize(p, "int8")
    assert params.max_abs_diff(p, before) == 0.0  # pure
    blocks = q["blocks"][0]
    assert blocks["attn"]["qkv_w"].dtype == torch.int8 and "qkv_scale" in blocks["attn"]
    assert blocks["mlp"]["proj_w"].dtype == torch.int8 and q["lm_head"].dtype == torch.int8
    assert q["wte"].dtype == torch.float32 and blocks["ln1"]["w"].dtype == torch.float32
    idx = torch.randint(cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    want, _ = model.forward(_dequantised(q), idx, cfg)
    got, _ = model.forward(q, idx, cfg, ops=quantize_module.OPS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="int8 weights with a scale"):
        model.forward(q, idx, cfg)  # the plain primitives never read int8 rows as plain
    fp32, _ = model.forward(p, idx, cfg)
    assert 0 < (got - fp32).abs().max() < 0.05  # quantised, but close


@pytest.mark.slow  # three compiles; the compiled decodes below run the same product
def test_one_row_under_the_compiler_equals_the_library_matmul():
    gen = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(1, 1, 24, generator=gen), torch.randn(40, 24, generator=gen), None
    q, scale = int8_rows(w)
    compiled = torch.compile(products.row_project, fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), F.linear(x, w), atol=1e-5, rtol=1e-5)
    want = F.linear(x, q.float() * scale[:, None])
    torch.testing.assert_close(compiled(x, q, None, scale), want, atol=1e-5, rtol=1e-5)
    wide = torch.randn(3, 24, generator=gen)  # more rows: the library matmul
    torch.testing.assert_close(compiled(wide, w), F.linear(wide, w), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a compile per mode; the eager quantised decode and forward stay
@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_quantised_compiled_decode_equals_its_eager_decode(mode):
    cfg, model = tiny_config(), models.get("gpt-fast")
    q = quantize(model.init(cfg, 0), mode)
    kw = dict(max_new_tokens=20, temperature=0)
    eager = generate(model, q, cfg, [1, 2, 3], **kw)
    step = steps.build_decode_step(model, q, cfg, "compiled")
    torch.testing.assert_close(generate(model, q, cfg, [1, 2, 3], step=step, **kw), eager)
