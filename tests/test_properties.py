"""Properties over generated inputs (hypothesis): tokenizer round trips, batch windows,
cached decode against the full forward, and checkpoint save/load identity."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VARIANTS, real_text, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yocto_fn import models
from yocto_fn.core.params import named_leaves
from yocto_fn.data import Dataset
from yocto_fn.formats import checkpoint
from yocto_fn.formats.tokenizer import SPECIALS, CharTokenizer, train_bpe

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = real_text()[:20_000]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([TEXT], 400)


@given(st.text(alphabet=sorted(set(TEXT)), max_size=200))
@FEW
def test_char_round_trip_over_the_vocabulary(text):
    tok = CharTokenizer(sorted(set(TEXT)))
    assert tok.decode(tok.encode(text)) == text


@given(st.text(max_size=120))
@FEW
def test_bpe_round_trip_on_any_unicode(bpe, text):
    """Byte-level BPE covers every string; only the special tokens' own spellings are
    read as those tokens."""
    if any(s in text for s in SPECIALS):
        return
    ids = bpe.encode(text)
    assert all(0 <= i < 400 for i in ids)
    assert bpe.decode(ids) == text


@given(block=st.integers(1, 64), batch=st.integers(1, 12), seed=st.integers(0, 2**31),
       split=st.sampled_from(["train", "val"]))  # fmt: skip
@FEW
def test_get_batch_windows_lie_inside_the_data(char_dir, block, batch, seed, split):
    """Every row of x followed by y's last token is a window of the split, y is x shifted
    by one, and a data-parallel share (`rows`) is exactly those rows of the whole batch."""
    ds = Dataset(char_dir)
    data = np.asarray(ds.splits[split], dtype=np.int64)
    x, y = ds.get_batch(split, batch, block, torch.Generator().manual_seed(seed))
    assert x.shape == y.shape == (batch, block) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(data, block + 1)
    for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
        assert (windows == row).all(axis=1).any()
    share = slice(batch // 2, batch)
    xs, ys = ds.get_batch(split, batch, block, torch.Generator().manual_seed(seed), rows=share)
    assert torch.equal(xs, x[share]) and torch.equal(ys, y[share])


@st.composite
def decode_case(draw):
    block = draw(st.integers(2, 20))
    prompt = draw(st.integers(1, block - 1))
    chunks, left = [], block - prompt
    while left:
        chunks.append(draw(st.integers(1, left)))
        left -= chunks[-1]
    head_dim = draw(st.sampled_from([4, 8]))
    n_head = draw(st.integers(1, 3))
    cfg = tiny_config(block_size=block, n_layer=draw(st.integers(1, 2)), n_head=n_head,
                      n_embd=n_head * head_dim, vocab_size=draw(st.integers(5, 40)))  # fmt: skip
    return draw(st.sampled_from(VARIANTS)), cfg, prompt, chunks, draw(st.integers(0, 99))


@given(decode_case())
@FEW
def test_cached_decode_equals_the_full_forward(case):
    """Prefill a prompt, then feed the rest in chunks of any size through the cache: every
    position's logits equal the uncached forward over the whole sequence."""
    name, cfg, prompt, chunks, seed = case
    model = models.get(name)
    params = model.init(cfg, seed)
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size),
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    full, _ = model.forward(params, idx, cfg)
    parts, cache, at = [], model.init_cache(cfg, 2), 0
    for n in (prompt, *chunks):
        logits, cache = model.forward(params, idx[:, at : at + n], cfg, cache=cache)
        parts.append(logits)
        at += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
tensors = st.builds(
    lambda shape, dtype, seed: (
        torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
    ).to(dtype),
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from(DTYPES),
    st.integers(0, 2**31),
)
plain = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
trees = st.recursive(tensors | plain, lambda inner: st.dictionaries(
    st.text("abcdef_", min_size=1, max_size=4), inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=12)  # fmt: skip


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@given(params=st.dictionaries(st.text("wxyz", min_size=1, max_size=3), tensors, max_size=5),
       extra=trees)  # fmt: skip
@FEW
def test_checkpoint_save_load_identity(params, extra):
    ckpt = {"format": checkpoint.FORMAT, "arch": "gpt", "model_config": {}, "params": params,
            "iter": 3, "tokenizer": {"kind": "char", "chars": ["a"]}, "extra": extra}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(Path(tmp) / "c.pt", ckpt)
        loaded = checkpoint.load(Path(tmp) / "c.pt")
    assert same(ckpt, {k: v for k, v in loaded.items() if k != "payload_sha256"})
    assert named_leaves(loaded["params"]).keys() == named_leaves(params).keys()
