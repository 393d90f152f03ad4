"""yocto_fn.core.analysis against independent references: finite differences of the gradient,
the full Hessian of a tiny model (`torch.autograd.functional.hessian`) and its
`eigvalsh`, the trace estimator's own variance formula, and per-example gradients taken one
row at a time."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import orjson
import pytest
import torch
from conftest import ckpt
from torch.nn.attention import SDPBackend, sdpa_kernel

from yocto_fn import analysis, cli, models
from yocto_fn.config import AnalyzeConfig
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.ensemble import per_example_grads
from yocto_fn.core.params import count, to, tree_leaves, tree_map
from yocto_fn.data import Dataset

VARIANTS = ["gpt", "gpt-plus", "gpt-fast"]
CFG = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=6, vocab_size=7)


def tiny(name: str, seed: int = 0):
    """A float64 model of about a thousand parameters and a fixed batch of 4 rows."""
    model = models.get(name)
    params = to(model.init(CFG, seed), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    batch = tuple(torch.randint(0, CFG.vocab_size, (4, CFG.block_size), generator=gen)
                  for _ in range(2))  # fmt: skip
    return model, params, batch, analysis.make_loss(model, CFG)


def full_hessian(loss, params, batch) -> torch.Tensor:
    flat = analysis._flat(params)
    with sdpa_kernel(SDPBackend.MATH):  # the fused kernel has no double backward
        return torch.autograd.functional.hessian(
            lambda f: loss(analysis._unflat(f, params), batch), flat, vectorize=True
        )


def random_tree(params, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype), params)


@pytest.mark.parametrize("name", VARIANTS)
def test_hvp_matches_finite_differences_and_the_full_hessian(name):
    model, params, batch, loss = tiny(name)
    v = random_tree(params)
    hv = analysis._flat(analysis.hvp(loss, params, batch, v))
    grad = lambda p: analysis._flat(torch.func.grad(loss)(p, batch))  # noqa: E731
    eps = 1e-6  # central differences: error ~ eps^2 (3e-7 here), roundoff ~ 1e-16 / eps
    step = lambda s: tree_map(lambda p, d: p + s * eps * d, params, v)  # noqa: E731
    fd = (grad(step(1)) - grad(step(-1))) / (2 * eps)
    assert torch.allclose(hv, fd, rtol=1e-6, atol=1e-6)
    exact = full_hessian(loss, params, batch) @ analysis._flat(v)
    assert torch.allclose(hv, exact, rtol=1e-8, atol=1e-10)


def test_hvp_of_a_list_of_batches_is_their_mean():
    model, params, batch, loss = tiny("gpt-fast")
    other = tiny("gpt-fast", seed=5)[2]
    v = random_tree(params)
    both = analysis._flat(analysis.hvp(loss, params, [batch, other], v))
    each = [analysis._flat(analysis.hvp(loss, params, b, v)) for b in (batch, other)]
    assert torch.allclose(both, (each[0] + each[1]) / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", VARIANTS)
def test_top_eigenvalues_match_eigvalsh_of_the_full_hessian(name):
    model, params, batch, loss = tiny(name)
    exact = torch.linalg.eigvalsh(full_hessian(loss, params, batch))
    found = analysis.top_eigenvalues(loss, params, batch, k=3, iters=40)
    assert found.iters == 40
    assert found.values == pytest.approx(exact.flip(0)[:3].tolist(), rel=1e-6)
    assert found.smallest == pytest.approx(exact[0].item(), rel=1e-6)
    assert max(found.residuals) < 1e-2


def test_top_eigenvalue_of_a_known_quadratic():
    """loss = 1/2 x^T A x over a two-leaf tree: the Hessian is A itself."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    spectrum = torch.tensor([9.0, 4.0, 2.5] + [0.1 * i for i in range(9)], dtype=torch.float64)
    a = q @ torch.diag(spectrum) @ q.T
    params = {"w": torch.ones(3, 2, dtype=torch.float64), "b": torch.ones(6, dtype=torch.float64)}

    def loss(p, _batch):
        x = analysis._flat(p)
        return 0.5 * x @ a @ x

    found = analysis.top_eigenvalues(loss, params, None, k=3, iters=12)
    assert found.values == pytest.approx([9.0, 4.0, 2.5], rel=1e-9)
    assert found.smallest == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        analysis.top_eigenvalues(loss, params, None, k=5, iters=4)


@pytest.mark.slow  # 200 samples of a full-Hessian model; the diagonal quadratic stays
@pytest.mark.parametrize("name", ["gpt", "gpt-fast"])
def test_hessian_trace_within_its_expected_error(name):
    """One Rademacher sample z^T H z has variance 2 (|H|_F^2 - sum H_ii^2): with 200
    samples the estimate lies within 4 of those standard errors of tr(H), and the standard
    error it reports is that figure's size."""
    model, params, batch, loss = tiny(name)
    h = full_hessian(loss, params, batch)
    samples = 200
    expected_se = math.sqrt(2 * ((h**2).sum() - (h.diag() ** 2).sum()) / samples)
    found = analysis.hessian_trace(loss, params, batch, samples=samples, seed=1)
    assert abs(found.estimate - h.trace().item()) < 4 * expected_se
    assert 0.7 * expected_se < found.stderr < 1.3 * expected_se
    again = analysis.hessian_trace(loss, params, batch, samples=samples, seed=1)
    assert again == found


def test_hessian_trace_of_a_diagonal_quadratic_is_exact():
    """With Rademacher z (z_i^2 = 1) a diagonal Hessian leaves z^T H z no variance at all."""
    diag = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0, 0.25], dtype=torch.float64)
    params = {"w": torch.zeros(2, 3, dtype=torch.float64)}
    loss = lambda p, _b: 0.5 * (diag * p["w"].reshape(-1) ** 2).sum()  # noqa: E731
    found = analysis.hessian_trace(loss, params, None, samples=5)
    assert found.estimate == pytest.approx(diag.sum().item(), rel=1e-12)
    assert found.stderr == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", VARIANTS)
def test_noise_scale_matches_an_explicit_per_example_computation(name):
    """Each row's gradient from its own autograd call, their covariance from torch.cov."""
    model, params, (x, y), loss = tiny(name)
    other = tiny(name, seed=7)[2]
    found = analysis.gradient_noise_scale(per_example_grads(model, CFG), params, [(x, y), other])
    traces, norms = [], []
    for bx, by in [(x, y), other]:
        rows = torch.stack([
            analysis._flat(torch.func.grad(loss)(params, (bx[i : i + 1], by[i : i + 1])))
            for i in range(bx.shape[0])
        ])  # fmt: skip
        n = rows.shape[0]
        trace = torch.cov(rows.T).trace()
        traces.append(trace)
        norms.append(rows.mean(0).square().sum() - trace / n)
    trace_cov, grad_sq = sum(traces) / 2, sum(norms) / 2
    assert found.rows == 4 and found.batches == 2
    assert found.trace_cov == pytest.approx(trace_cov.item(), rel=1e-9)
    assert found.grad_sq == pytest.approx(grad_sq.item(), rel=1e-9)
    assert found.simple == pytest.approx((trace_cov / grad_sq).item(), rel=1e-9)
    assert found.grad_sq_stderr == pytest.approx(abs(norms[0] - norms[1]).item() / 2, rel=1e-9)
    assert found.trace_cov_stderr == pytest.approx(abs(traces[0] - traces[1]).item() / 2,
                                                   rel=1e-9)  # fmt: skip


def test_noise_scale_of_a_known_distribution():
    """Row gradients g_i = G + noise with known covariance: the estimates converge on
    tr(Sigma) and |G|^2 over many batches."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    sd = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    draws = [mean + sd * torch.randn(16, 3, generator=gen, dtype=torch.float64)
             for _ in range(4000)]  # fmt: skip
    found = analysis.gradient_noise_scale(lambda params, g: {"w": g}, {}, draws)
    assert found.trace_cov == pytest.approx((sd**2).sum().item(), rel=0.02)
    assert found.grad_sq == pytest.approx(mean.square().sum().item(), rel=0.02)


def test_filter_normalized_directions():
    model, params, batch, loss = tiny("gpt")
    d = analysis.filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for w, v in zip(tree_leaves(params), tree_leaves(d), strict=True):
        if w.dim() < 2:
            assert not v.any()
        else:
            assert torch.allclose(v.norm(dim=1), w.norm(dim=1), rtol=1e-10)
            assert not torch.allclose(v, w)


def test_loss_landscape_is_the_loss_along_the_two_directions():
    model, params, batch, loss = tiny("gpt-plus")
    seen = []
    scape = analysis.loss_landscape(loss, params, batch, steps=5, span=0.5, seed=2,
                                    progress=seen.append)  # fmt: skip
    assert seen == [0, 1, 2, 3, 4]
    assert scape.alphas == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert scape.losses[2][2] == pytest.approx(scape.center, rel=1e-12)
    assert scape.center == pytest.approx(loss(params, batch).item(), rel=1e-12)
    gen = torch.Generator().manual_seed(2)
    d1, d2 = (analysis.filter_normalized_direction(params, gen) for _ in range(2))
    moved = tree_map(lambda p, a, b: p + 0.5 * a - 0.25 * b, params, d1, d2)
    assert scape.losses[4][1] == pytest.approx(loss(moved, batch).item(), rel=1e-12)
    assert len({round(v, 6) for row in scape.losses for v in row}) > 20


def test_landscape_of_a_quadratic():
    params = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)}
    d1 = {"w": torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)}
    d2 = {"w": torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)}
    loss = lambda p, _b: (p["w"] ** 2).sum()  # noqa: E731
    scape = analysis.loss_landscape(loss, params, None, steps=3, span=1.0,
                                    directions=[d1, d2])  # fmt: skip
    expected = [[(1 + a) ** 2 + 4 + 9 + (4 + b) ** 2 for b in (-1, 0, 1)] for a in (-1, 0, 1)]
    assert sum(scape.losses, []) == pytest.approx(sum(expected, []))


def test_float32_parameters_of_a_small_model():
    """The library's own dtype: the functions run on float32 params and agree with float64
    to float32 precision."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    model = models.get("gpt-fast")
    params = model.init(cfg, 0)
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    loss = analysis.make_loss(model, cfg)
    low = analysis.top_eigenvalues(loss, params, (x, x), k=1, iters=20)
    high = analysis.top_eigenvalues(loss, to(params, dtype=torch.float64), (x, x), iters=20)
    assert low.values[0] == pytest.approx(high.values[0], rel=1e-3)
    assert count(params) > 5000


# ----------------------------------------------------------------------------- cli analyze


@pytest.fixture(scope="module")
def run_ckpt(char_dir, tmp_path_factory) -> Path:
    """A few steps of a tiny gpt-plus on real text: a checkpoint that names its data."""
    out = tmp_path_factory.mktemp("run")
    train = ["train", "--model", "gpt-plus", "--data-dir", str(char_dir), "--ckpt-dir",
             str(out), "--max-iters", "6", "--eval-interval", "6", "--eval-iters", "1",
             "--batch-size", "4", "--block-size", "16", "--n-layer", "1", "--n-embd", "16",
             "--n-head", "2", "--amp", "off", "--device", "cpu"]  # fmt: skip
    assert cli.main(train) == 0
    return out / "latest.pt"


def measured_batches(
    ckpt_path: Path, char_dir: Path, batches: int, rows: int, seed: int = AnalyzeConfig.seed
):
    """The batches `analyze` draws: --batches draws of --batch-size rows from --seed."""
    saved = ckpt(ckpt_path)
    mcfg = ModelConfig.from_dict(saved["model_config"])
    gen = torch.Generator().manual_seed(seed)
    ds = Dataset(char_dir)
    drawn = [ds.get_batch("train", rows, mcfg.block_size, gen) for _ in range(batches)]
    return models.get(saved["arch"]), mcfg, saved["params"], drawn


@pytest.mark.parametrize("what", ["sharpness", "trace", "noise-scale", "landscape"])
def test_analyze_writes_the_library_measure_with_provenance(what, run_ckpt, char_dir, tmp_path,
                                                             capsys):  # fmt: skip
    out = tmp_path / "a"
    argv = ["analyze", "--ckpt", str(run_ckpt), "--what", what, "--batches", "2", "--iters",
            "6", "--eigenvalues", "2", "--samples", "4", "--steps", "3", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    line = capsys.readouterr().out
    saved = orjson.loads((out / f"{what}-iter6.json").read_bytes())
    assert saved["what"] == what and saved["checkpoint"]["iter"] == 6
    assert saved["data"] == {"dir": str(char_dir), "split": "train", "batches": 2, "rows": 4,
                             "block_size": 16, "seed": AnalyzeConfig.seed}  # fmt: skip
    assert saved["torch"] == torch.__version__ and saved["model_config"]["n_embd"] == 16
    model, mcfg, params, batches = measured_batches(run_ckpt, char_dir, 2, 4)
    loss, seed = analysis.make_loss(model, mcfg), AnalyzeConfig.seed
    got = saved["result"]
    if what == "sharpness":
        want = analysis.top_eigenvalues(loss, params, batches, k=2, iters=6, seed=seed)
        assert got["values"] == pytest.approx(want.values, rel=1e-5)
        assert f"{want.values[0]:.4g}" in line
    elif what == "trace":
        want = analysis.hessian_trace(loss, params, batches, samples=4, seed=seed)
        assert got["estimate"] == pytest.approx(want.estimate, rel=1e-5)
    elif what == "noise-scale":
        want = analysis.gradient_noise_scale(per_example_grads(model, mcfg), params, batches)
        assert got["simple"] == pytest.approx(want.simple, rel=1e-5)
        assert got["simple_tokens"] == pytest.approx(want.simple * 16, rel=1e-5)
    else:
        want = analysis.loss_landscape(loss, params, batches, steps=3, seed=seed)
        assert sum(got["losses"], []) == pytest.approx(sum(want.losses, []), rel=1e-5)
        assert matplotlib.image.imread(out / "landscape-iter6.png").std() > 0.05


def test_analyze_bad_inputs_exit_2_and_write_nothing(run_ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    prepare = ["prepare-char", "--text-path", str(tmp_path / "t.txt"), "--out-dir", str(other)]
    (tmp_path / "t.txt").write_text("abcab " * 2000, encoding="utf-8")
    assert cli.main(prepare) == 0
    capsys.readouterr()
    out = tmp_path / "a"
    base = ["analyze", "--ckpt", str(run_ckpt), "--out", str(out), "--device", "cpu"]
    cases = {
        "checkpoint not found": ["--ckpt", str(tmp_path / "none.pt")],
        "--iters must be at least 1": ["--iters", "0"],
        "--samples must be at least 2": ["--what", "trace", "--samples", "1"],
        "--eigenvalues 3 needs at least as many --iters": ["--eigenvalues", "3", "--iters", "2"],
        "--span must be positive": ["--what", "landscape", "--span", "0"],
        "needs at least 2 rows per batch": ["--what", "noise-scale", "--batch-size", "1"],
        "but the model has": ["--data-dir", str(other)],
        "no prepared data": ["--data-dir", str(tmp_path / "nowhere")],
        "expected one of landscape, noise-scale, sharpness, trace": ["--what", "curvature"],
        "has no EMA weights": ["--ema"],
        "is an existing file": ["--out", str(tmp_path / "t.txt")],
    }
    for message, flags in cases.items():
        assert cli.main(base + flags) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
    assert not out.exists()
