"""Stateless keys: determinism, independence, dropout statistics, vmap rule."""

import torch

from yocto_fn import layers, rng


def test_bits_are_deterministic_and_key_dependent():
    k = rng.key(7)
    assert torch.equal(rng.bits(k, (3, 5)), rng.bits(rng.key(7), (3, 5)))
    assert not torch.equal(rng.bits(k, (3, 5)), rng.bits(rng.key(8), (3, 5)))
    assert not torch.equal(rng.fold_in(k, 1), rng.fold_in(k, 2))
    keys = rng.split(k, 4)
    assert keys.shape == (4,) and len(set(keys.tolist())) == 4


def test_uniform_statistics():
    u = rng.uniform(rng.key(0), (200_000,))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    lag = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(lag.item()) < 0.01


def test_dropout_keeps_the_right_fraction_and_rescales():
    x = torch.ones(100_000)
    y = layers.dropout(x, 0.25, rng.key(1))
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert layers.dropout(x, 0.25, None) is x


def test_bits_vmap_rule_matches_a_loop():
    keys = torch.stack([rng.key(1), rng.key(2), rng.key(3)])
    batched = torch.func.vmap(lambda k: rng.bits(k, (4, 6)))(keys)
    for i in range(3):
        assert torch.equal(batched[i], rng.bits(keys[i], (4, 6)))
