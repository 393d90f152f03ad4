"""The three variants: shapes, causality, cached decode, purity, determinism, vmap."""

import pytest
import torch
from conftest import VARIANTS, tiny_config

from yocto_fn import layers, models, params, rng
from yocto_fn.core import members as member_forms
from yocto_fn.errors import UserError
from yocto_fn.generate import products


def _idx(cfg, b=2, t=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (b, t or cfg.block_size), generator=g)


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_param_count(name):
    cfg = tiny_config()
    m = models.get(name)
    p = m.init(cfg, 0)
    logits, cache = m.forward(p, _idx(cfg), cfg)
    assert logits.shape == (2, cfg.block_size, cfg.vocab_size)
    assert cache is None
    assert params.count(p) > 0


@pytest.mark.parametrize("name", VARIANTS)
def test_causality(name):
    cfg = tiny_config()
    m = models.get(name)
    p = m.init(cfg, 1)
    idx = _idx(cfg)
    t = 7
    changed = idx.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % cfg.vocab_size
    a, _ = m.forward(p, idx, cfg)
    b, _ = m.forward(p, changed, cfg)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("name", VARIANTS)
def test_prefill_then_step_matches_full_forward(name):
    cfg = tiny_config()
    m = models.get(name)
    p = m.init(cfg, 2)
    idx = _idx(cfg)
    full, _ = m.forward(p, idx, cfg)
    cache = m.init_cache(cfg, batch=2)
    prefill, cache = m.forward(p, idx[:, :5], cfg, cache=cache)
    pieces = [prefill]
    for t in range(5, cfg.block_size):
        step, cache = m.forward(p, idx[:, t : t + 1], cfg, cache=cache)
        pieces.append(step)
    assert int(cache.pos) == cfg.block_size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt", "gpt-fast"])
def test_learned_positions_refuse_to_pass_block_size(name):
    cfg = tiny_config()
    m = models.get(name)
    p = m.init(cfg, 0)
    with pytest.raises(UserError, match="block_size"):
        m.init_cache(cfg, batch=1, max_len=cfg.block_size + 1)
    cache = m.init_cache(cfg, batch=1)
    _, cache = m.forward(p, _idx(cfg, b=1), cfg, cache=cache)
    with pytest.raises(UserError, match="KV cache is full"):
        m.forward(p, _idx(cfg, b=1, t=1), cfg, cache=cache)
    with pytest.raises(UserError, match="block_size"):
        m.forward(p, _idx(cfg, b=1, t=cfg.block_size + 1), cfg)


def test_rope_cache_may_be_longer_than_block_size():
    cfg = tiny_config()
    m = models.get("gpt-plus")
    p = m.init(cfg, 0)
    idx = _idx(cfg, b=1, t=2 * cfg.block_size)
    full, _ = m.forward(p, idx, cfg)
    cache = m.init_cache(cfg, batch=1, max_len=2 * cfg.block_size)
    out, _ = m.forward(p, idx, cfg, cache=cache)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_is_pure_and_init_deterministic(name):
    cfg = tiny_config(dropout=0.2)
    m = models.get(name)
    p = m.init(cfg, 3)
    before = params.clone(p)
    key = rng.key(5)
    a, _ = m.forward(p, _idx(cfg), cfg, train=True, dropout_key=key)
    b, _ = m.forward(p, _idx(cfg), cfg, train=True, dropout_key=key)
    c, _ = m.forward(p, _idx(cfg), cfg, train=True, dropout_key=rng.key(6))
    assert params.max_abs_diff(p, before) == 0.0
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    assert params.max_abs_diff(m.init(cfg, 3), p) == 0.0
    assert params.max_abs_diff(m.init(cfg, 4), p) > 0.0


def test_forward_does_not_touch_global_rng():
    cfg = tiny_config(dropout=0.5)
    m = models.get("gpt")
    p = m.init(cfg, 0)
    state = torch.get_rng_state()
    m.forward(p, _idx(cfg), cfg, train=True, dropout_key=rng.key(0))
    assert torch.equal(state, torch.get_rng_state())


def test_dropout_without_key_is_an_error():
    cfg = tiny_config(dropout=0.1)
    m = models.get("gpt")
    with pytest.raises(ValueError, match="dropout_key"):
        m.forward(m.init(cfg, 0), _idx(cfg), cfg, train=True)


def test_variant_definitions():
    cfg = tiny_config()
    trees = {n: models.get(n).init(cfg, 0) for n in VARIANTS}
    gpt, plus = trees["gpt"], trees["gpt-plus"]
    names = {n: set(params.named_leaves(p)) for n, p in trees.items()}
    assert "wpe" in names["gpt"] and "wpe" in names["gpt-fast"] and "wpe" not in names["gpt-plus"]
    assert "blocks.0.attn.qkv_b" in names["gpt"]
    assert not any(k.endswith("_b") for k in names["gpt-fast"] | names["gpt-plus"])
    assert "blocks.0.ln1.b" not in names["gpt-plus"]  # RMSNorm: weight only
    std = plus["blocks"][0]["attn"]["proj_w"].std().item()
    expected = 0.02 / (2 * cfg.n_layer) ** 0.5
    assert abs(std - expected) < 0.25 * expected
    tied = models.get("gpt").init(tiny_config(tie_weights=True), 0)
    assert "lm_head" not in tied and "lm_head" in gpt
    assert models.get("gpt_plus") is models.get("gpt-plus")
    with pytest.raises(UserError, match="unknown model"):
        models.get("gpt-huge")


@pytest.mark.parametrize("name", VARIANTS)
def test_vmap_over_ensemble_equals_separate_forwards(name):
    cfg = tiny_config()
    m = models.get(name)
    members = [m.init(cfg, 10), m.init(cfg, 11)]
    idx = _idx(cfg)

    def logits(p):
        return m.forward(p, idx, cfg)[0]

    batched = torch.func.vmap(logits)(params.stack(members))
    for i, p in enumerate(members):
        torch.testing.assert_close(batched[i], logits(p), atol=1e-5, rtol=1e-5)


def test_vmapped_dropout_keys_give_each_member_its_own_mask():
    cfg = tiny_config(dropout=0.3)
    m = models.get("gpt")
    p = m.init(cfg, 0)
    idx = _idx(cfg)
    keys = torch.stack([rng.key(1), rng.key(2)])

    def logits(k):
        return m.forward(p, idx, cfg, train=True, dropout_key=k)[0]

    batched = torch.func.vmap(logits)(keys)
    torch.testing.assert_close(batched[0], logits(keys[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], logits(keys[1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("tie", [False, True])
def test_forward_over_stacked_params_equals_each_members_forward(name, tie):
    """The ensemble path: params, tokens and dropout keys with a leading member axis."""
    cfg = tiny_config(dropout=0.2, tie_weights=tie)
    m = models.get(name)
    gen = torch.Generator().manual_seed(0)
    members = [  # perturbed, so that norm weights and biases differ between members
        params.tree_map(lambda t: t + 0.1 * torch.randn(t.shape, generator=gen), m.init(cfg, s))
        for s in (4, 5, 6)
    ]
    idx = torch.stack([_idx(cfg, seed=s) for s in range(3)])
    keys = torch.stack([rng.key(s) for s in (7, 8, 9)])
    logits, _ = m.forward(params.stack(members), idx, cfg, train=True, dropout_key=keys)
    assert logits.shape == (3, 2, cfg.block_size, cfg.vocab_size)
    for e, p in enumerate(members):
        want, _ = m.forward(p, idx[e], cfg, train=True, dropout_key=keys[e])
        torch.testing.assert_close(logits[e], want, atol=1e-6, rtol=1e-6)


def test_label_smoothing_matches_a_hand_computed_loss():
    """(1 - s) * NLL of the target + s * mean NLL over all classes, token-averaged."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = torch.randint(0, 5, (2, 3), generator=g)
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    for s in (0.0, 0.2):
        per_token = (1 - s) * nll + s * (-logp).mean(-1)
        got = layers.cross_entropy(logits, targets, s)
        torch.testing.assert_close(got, per_token.mean(), atol=1e-6, rtol=0)
        per_member = member_forms.cross_entropy(logits, targets, s)
        torch.testing.assert_close(per_member, per_token.mean(1), atol=1e-6, rtol=0)
    plain = layers.cross_entropy(logits, targets)  # no smoothing unless asked for
    torch.testing.assert_close(plain, nll.mean(), atol=1e-6, rtol=0)


def test_manual_attention_drops_probabilities_with_its_key():
    """With V = I the output is the attention matrix itself: every kept probability is
    scaled by 1/(1-p), about a fraction p of them are zero, and without a key none is."""
    T, p = 64, 0.25
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, T, 8, generator=g).unbind(0)
    eye = torch.eye(T).expand(1, 1, T, T)
    probs = (q @ k.mT / 8**0.5).masked_fill(~torch.ones(T, T).tril().bool(), float("-inf"))
    probs = probs.softmax(-1)
    kept = layers.attend_manual(q, k, eye, None, p, rng.key(3))
    torch.testing.assert_close(layers.attend_manual(q, k, eye, None, p, None), probs)
    live = probs > 0
    dropped = (kept == 0) & live
    torch.testing.assert_close(kept[live & ~dropped], probs[live & ~dropped] / (1 - p))
    assert abs(dropped.sum().item() / live.sum().item() - p) < 0.05


def test_gpt_forward_passes_its_dropout_to_the_attention_probabilities(monkeypatch):
    cfg = tiny_config(dropout=0.2)
    calls = []
    original = layers.attend_manual

    def spy(q, k, v, mask, p=0.0, key=None):
        calls.append((p, key is not None))
        return original(q, k, v, mask, p, key)

    monkeypatch.setattr(layers, "attend_manual", spy)
    m = models.get("gpt")
    m.forward(m.init(cfg, 0), _idx(cfg), cfg, train=True, dropout_key=rng.key(1))
    assert calls == [(0.2, True)] * cfg.n_layer
    calls.clear()
    m.forward(m.init(cfg, 0), _idx(cfg), cfg)
    assert calls == [(0.2, False)] * cfg.n_layer  # inference: no key, nothing dropped


@pytest.mark.parametrize("name", VARIANTS)
def test_residual_projections_start_scaled_only_in_gpt_plus(name):
    """gpt-plus: both residual output projections (attention and MLP) of every block start at
    std 0.02 / sqrt(2 * n_layer); every other weight, and all of gpt / gpt-fast, at 0.02."""
    cfg = tiny_config(n_layer=8, n_embd=256, n_head=4, vocab_size=512)
    p = models.get(name).init(cfg, 0)
    scaled = 0.02 / (2 * cfg.n_layer) ** 0.5 if name == "gpt-plus" else 0.02
    for block in p["blocks"]:
        for part in ("attn", "mlp"):
            assert block[part]["proj_w"].std().item() == pytest.approx(scaled, rel=0.05)
        assert block["attn"]["qkv_w"].std().item() == pytest.approx(0.02, rel=0.05)
        assert block["mlp"]["fc_w"].std().item() == pytest.approx(0.02, rel=0.05)
    assert p["wte"].std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_cache_stores_bf16_and_decodes_close_to_fp32(name):
    """bf16 weights with a bf16 cache (half the decode memory traffic): the buffers keep
    their dtype through prefill and steps, and the logits stay close to fp32's."""
    cfg = tiny_config()
    m = models.get(name)
    p, idx = m.init(cfg, 0), _idx(cfg)
    full, _ = m.forward(p, idx, cfg)
    p = params.to(p, dtype=torch.bfloat16)
    cache = m.init_cache(cfg, batch=2, dtype=torch.bfloat16)
    _, cache = m.forward(p, idx[:, :-1], cfg, cache=cache)
    step, cache = m.forward(p, idx[:, -1:], cfg, cache=cache)
    assert cache.k.dtype == cache.v.dtype == torch.bfloat16 and cache.pos.dtype == torch.int64
    assert int(cache.pos) == cfg.block_size
    torch.testing.assert_close(step[:, 0].float(), full[:, -1], atol=3e-2, rtol=0)


def test_cached_decode_under_bf16_autocast_writes_into_an_fp32_cache():
    """Autocast makes keys/values bf16; the fp32 cache stores them converted."""
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p, idx = m.init(cfg, 0), _idx(cfg)
    full, _ = m.forward(p, idx, cfg)
    cache = m.init_cache(cfg, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, cache = m.forward(p, idx[:, :-1], cfg, cache=cache)
        step, cache = m.forward(p, idx[:, -1:], cfg, cache=cache)
    assert cache.k.dtype == torch.float32
    torch.testing.assert_close(step[:, 0].float(), full[:, -1], atol=3e-2, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decode_under_vmap_over_prompts_matches_each_prompts_forward(name):
    """Under torch.func transforms the cache write takes its out-of-place path: a cache
    made inside `vmap` (so not batched) takes batched keys, and a batched cache passed in
    comes back in new buffers while the one passed in keeps its contents."""
    cfg = tiny_config()
    model = models.get(name)
    p = model.init(cfg, 0)
    prompts = torch.randint(cfg.vocab_size, (3, 1, 10), generator=torch.Generator().manual_seed(3))
    want = torch.cat([model.forward(p, prompt, cfg)[0] for prompt in prompts])

    def prefill_then_step(idx, cache):
        first, cache = model.forward(p, idx[:, :7], cfg, cache=cache)
        rest, cache = model.forward(p, idx[:, 7:], cfg, cache=cache)
        return torch.cat([first, rest], dim=1), cache

    inside = torch.func.vmap(lambda idx: prefill_then_step(idx, model.init_cache(cfg, 1))[0])
    torch.testing.assert_close(inside(prompts).squeeze(1), want, atol=1e-5, rtol=1e-5)

    empty = model.init_cache(cfg, 1)
    passed = type(empty)(empty.k.expand(3, *empty.k.shape).clone(),
                         empty.v.expand(3, *empty.v.shape).clone(), empty.pos)  # fmt: skip
    dims = (0, type(empty)(0, 0, None))
    logits, filled = torch.func.vmap(prefill_then_step, in_dims=dims)(prompts, passed)
    torch.testing.assert_close(logits.squeeze(1), want, atol=1e-5, rtol=1e-5)
    assert filled.pos.tolist() == [10, 10, 10] and filled.k.abs().sum() > 0
    assert passed.k.abs().sum() == 0 and passed.v.abs().sum() == 0


@pytest.mark.parametrize("amp", [False, True])
def test_vmapped_decode_step_with_a_position_per_prompt(amp):
    """Prompts of different lengths, each prefilled on its own, then one vmapped step over
    caches whose `pos` is batched: each prompt's logits match its own uncached forward. The
    room check must stand aside (there is no one position to read), and under bf16 autocast
    the out-of-place write still stores the bf16 keys in the fp32 cache."""
    cfg, model = tiny_config(), models.get("gpt-plus")
    p = model.init(cfg, 0)
    gen = torch.Generator().manual_seed(6)
    prompts = [torch.randint(cfg.vocab_size, (1, n), generator=gen) for n in (7, 5, 3)]
    nexts = torch.randint(cfg.vocab_size, (3, 1, 1), generator=gen)
    caches = [model.forward(p, x, cfg, cache=model.init_cache(cfg, 1))[1] for x in prompts]
    stacked = type(caches[0])(*(torch.stack(parts) for parts in zip(*caches, strict=True)))
    assert stacked.pos.tolist() == [7, 5, 3]

    def step(token, cache):
        return model.forward(p, token, cfg, cache=cache)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits, after = torch.func.vmap(step)(nexts, stacked)
    assert after.pos.tolist() == [8, 6, 4] and after.k.dtype == torch.float32
    for i, (x, nxt) in enumerate(zip(prompts, nexts, strict=True)):
        full, _ = model.forward(p, torch.cat([x, nxt], dim=1), cfg)
        tol = 3e-2 if amp else 1e-5
        torch.testing.assert_close(logits[i, :, -1].float(), full[:, -1], atol=tol, rtol=0)


def test_a_cloned_cache_continues_independently():
    """Eager writes are in place, so two continuations of one prompt need a `clone`: each
    branch must then equal the uncached forward of its own tokens."""
    from yocto_fn.core.cache import clone

    cfg, model = tiny_config(), models.get("gpt-plus")
    p = model.init(cfg, 0)
    idx = torch.randint(cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))
    a, b, c = idx[:, 5:6], idx[:, 6:7], idx[:, 7:8]
    _, cache = model.forward(p, idx[:, :5], cfg, cache=model.init_cache(cfg, 2))
    other = clone(cache)
    _, cache = model.forward(p, a, cfg, cache=cache)
    _, other = model.forward(p, b, cfg, cache=other)
    for branch, branch_cache in ((a, cache), (b, other)):
        logits, _ = model.forward(p, c, cfg, cache=branch_cache)
        full, _ = model.forward(p, torch.cat([idx[:, :5], branch, c], dim=1), cfg)
        torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_rope_rotates_each_pair_by_position_times_its_frequency():
    """Against the formula by hand (float64): pair i of a head of size d turns by
    pos * theta^(-2i/d); the first and second halves of the features form the pairs."""
    import math

    d, theta, positions = 8, 10_000.0, torch.tensor([0, 3, 17])
    cos, sin = layers.rope_angles(positions, d, theta, torch.float32)
    for row, pos in enumerate(positions.tolist()):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            assert cos[row, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[row, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    cos16, sin16 = layers.rope_angles(positions, d, theta, torch.bfloat16)  # bf16 weights
    assert cos16.dtype == sin16.dtype == torch.bfloat16
    torch.testing.assert_close(cos16.float(), cos, atol=1e-2, rtol=0)
    x = torch.arange(1.0, 1.0 + 3 * d).view(1, 1, 3, d)
    out = layers.apply_rope(x, cos, sin)
    a, b = x[0, 0, 1, 1].item(), x[0, 0, 1, 1 + d // 2].item()  # pair 1 at position 3
    angle = 3 * theta ** (-2 / d)
    assert out[0, 0, 1, 1].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle))
    assert out[0, 0, 1, 1 + d // 2].item() == pytest.approx(
        a * math.sin(angle) + b * math.cos(angle)
    )


@pytest.mark.parametrize("with_bias", [True, False])
def test_member_norms_equal_each_members_own_norm(with_bias):
    """Stacked norm weights [E, C] (random, not the ones of a fresh init): member e's rows
    are normalised with its own weight (and bias), as F.layer_norm / F.rms_norm would."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(5)
    E, C = 3, 8
    x = torch.randn(E, 2, 4, C, generator=gen)
    p = {"w": torch.randn(E, C, generator=gen)}
    if with_bias:
        p["b"] = torch.randn(E, C, generator=gen)
    ln, rms = member_forms.layer_norm(x, p), member_forms.rms_norm(x, {"w": p["w"]})
    for e in range(E):
        want = F.layer_norm(x[e], (C,), p["w"][e], p.get("b", [None] * E)[e], 1e-5)
        torch.testing.assert_close(ln[e], want)
        torch.testing.assert_close(rms[e], F.rms_norm(x[e], (C,), p["w"][e], 1e-6))


@pytest.mark.parametrize("members", [False, True])
def test_norms_use_the_eps_they_are_given(members):
    """With a large eps the normalisation visibly shrinks: compare layer and RMS norm, plain
    and per member, with the formulas written out in float64."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 8, generator=gen) * 0.3
    shape = (2, 1, 1, 8) if members else (8,)
    w, b = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    w_in, b_in = (w[:, 0, 0], b[:, 0, 0]) if members else (w, b)
    eps = 0.25
    x64 = x.double()
    centred = x64 - x64.mean(-1, keepdim=True)
    want_ln = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b
    want_rms = x64 / (x64.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w
    forms = member_forms if members else layers
    got_ln = forms.layer_norm(x, {"w": w_in, "b": b_in}, eps=eps)
    got_rms = forms.rms_norm(x, {"w": w_in}, eps=eps)
    torch.testing.assert_close(got_ln.double(), want_ln, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_rms.double(), want_rms, atol=1e-5, rtol=1e-5)


def test_mlp_gelu_is_exact_gelu_unless_asked_for_tanh():
    """GELU by default is x·Φ(x) (the erf form); "tanh" is GPT-2's approximation."""
    gen = torch.Generator().manual_seed(9)
    p = {"fc_w": torch.randn(16, 8, generator=gen), "proj_w": torch.eye(8, 16)}
    x = torch.randn(4, 8, generator=gen) * 3
    h = (x @ p["fc_w"].T).double()
    exact = h * 0.5 * (1 + torch.erf(h / 2**0.5))
    tanh = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    torch.testing.assert_close(layers.mlp_gelu(x, p).double(), exact[:, :8], atol=1e-5, rtol=0)
    got = layers.mlp_gelu(x, p, approximate="tanh").double()
    torch.testing.assert_close(got, tanh[:, :8], atol=1e-5, rtol=0)
    assert (exact - tanh).abs().max() > 1e-4


def test_the_one_row_product_and_sum_form_matches_the_matmul():
    """The compiled decode's product (`products.row_project`) writes one row as a product and
    a sum; run eagerly here it must equal x @ w.T (scaled, plus bias) for 2-D and 3-D
    rows, fp32, int8 and bf16 weights, in the input's dtype."""
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(6, 4, generator=gen)
    b, scale = torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.5
    w8 = torch.randint(-127, 128, (6, 4), generator=gen, dtype=torch.int8)
    for x in (torch.randn(1, 4, generator=gen), torch.randn(1, 1, 4, generator=gen)):
        x64 = x.double()
        cases = [
            ((w, b, None), x64 @ w.double().T + b),
            ((w8, None, scale), x64 @ w8.double().T * scale),
            ((w.bfloat16(), b, None), x64 @ w.bfloat16().double().T + b),
        ]
        for (weight, bias, s), want in cases:
            got = products.row_project(x, weight, bias, s)
            assert got.shape == (*x.shape[:-1], 6) and got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
        for weight, s, want in (
            (w, None, x.bfloat16().double() @ w.bfloat16().double().T),
            (w8, scale, x.bfloat16().double() @ w8.double().T * scale),
        ):
            got = products.row_project(x.bfloat16(), weight, None, s)
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.double(), want, atol=0.1, rtol=0.02)
