"""End-to-end smoke tests a user can run on a new machine: `smoke-cpu` and `smoke-train`.

Each prints what it checks and ends with one line, `PASS ...` or `FAIL ...`; the CLI exits
non-zero on FAIL.
"""

from __future__ import annotations

import math
import tempfile
import unicodedata
from dataclasses import replace
from pathlib import Path

import torch

from ..config import SmokeCpuConfig, SmokeTrainConfig, TrainConfig
from ..core import models
from ..core.config import ModelConfig
from ..core.params import to
from ..data import PrepareCharConfig, default_corpus_text, prepare_char
from ..device import resolve
from ..formats.tokenizer import CharTokenizer
from ..generate.sample import generate
from .metrics import read
from .trainer import train


def normalise(text: str, tok: CharTokenizer) -> str:
    """NFKC, then drop what the vocabulary still lacks (the prompt is the user's, the
    vocabulary the corpus's)."""
    text = unicodedata.normalize("NFKC", text)
    return tok.known_only(text)


@torch.no_grad()
def greedy_no_cache(model, params, cfg: ModelConfig, ids: torch.Tensor, n: int) -> list[int]:
    seq = ids
    for _ in range(n):
        logits, _ = model.forward(params, seq, cfg)
        seq = torch.cat([seq, logits[:, -1:].argmax(-1)], dim=1)
    return seq[0, ids.shape[1] :].tolist()


def smoke_cpu(cfg: SmokeCpuConfig) -> bool:
    """Random-weight models of each variant on the default corpus's characters: the cached
    sampler must agree with full forwards, and decoding must give text back."""
    device = resolve(cfg.device)
    tok = CharTokenizer(sorted(set(default_corpus_text())))
    prompt = normalise(cfg.prompt, tok)
    ids = torch.tensor([tok.encode(prompt)], device=device)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, block_size=ids.shape[1] + cfg.new_tokens,
                       n_layer=2, n_head=2, n_embd=64)  # fmt: skip
    print(f"vocabulary: {tok.vocab_size} characters of the default corpus; prompt {prompt!r}")
    ok = True
    for name in models.NAMES:
        model = models.get(name)
        params = to(model.init(mcfg, cfg.seed), device)
        cached = generate(model, params, mcfg, ids, max_new_tokens=cfg.new_tokens, temperature=0)
        same = cached[0].tolist() == greedy_no_cache(model, params, mcfg, ids, cfg.new_tokens)
        gen = torch.Generator(device).manual_seed(cfg.seed)
        sampled = generate(model, params, mcfg, ids, max_new_tokens=cfg.new_tokens,
                           generator=gen)  # fmt: skip
        text = tok.decode(sampled[0].tolist())
        good = same and len(text) == cfg.new_tokens
        ok &= good
        print(f"{name:<9} cache == no cache: {same}; sample: {text[:60]!r}")
    print(f"{'PASS' if ok else 'FAIL'} smoke-cpu on {device}")
    return ok


def smoke_train(cfg: SmokeTrainConfig) -> bool:
    """A tiny model trained on the default corpus: the loss must fall, metrics.csv must be
    written, and --resume / --init-from must pick up where the run left off."""
    with tempfile.TemporaryDirectory(prefix="yocto_fn-smoke-") as tmp:
        root = cfg.out_dir or Path(tmp)
        data = root / "data"
        prepare_char(PrepareCharConfig(out_dir=data))
        base = TrainConfig(
            data_dir=data, ckpt_dir=root / "run", model=cfg.model, n_layer=2, n_head=2,
            n_embd=64, block_size=64, batch_size=16, max_iters=cfg.iters, lr=3e-3,
            eval_interval=max(1, cfg.iters // 4), eval_iters=5, device=cfg.device,
            seed=cfg.seed,
        )  # fmt: skip
        checks: dict[str, bool] = {}
        train(base)
        rows = read(base.ckpt_dir / "metrics.csv")
        vocab = torch.load(base.ckpt_dir / "latest.pt", weights_only=True)["model_config"][
            "vocab_size"
        ]
        first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
        checks["loss falls"] = last < first and last < 0.8 * math.log(vocab)
        checks["metrics.csv"] = [r["iter"] for r in rows][-1] == cfg.iters
        resumed = train(replace(base, resume=base.ckpt_dir / "latest.pt", max_iters=10))
        rows = read(base.ckpt_dir / "metrics.csv")
        checks["--resume"] = resumed["iter"] == cfg.iters + 10 == rows[-1]["iter"]
        warm = train(replace(base, init_from=base.ckpt_dir / "latest.pt", max_iters=10,
                           ckpt_dir=root / "warm"))  # fmt: skip
        checks["--init-from"] = warm["iter"] == 10 and warm["last_loss"] < first
        for name, good in checks.items():
            print(f"{name}: {'ok' if good else 'FAILED'}")
        ok = all(checks.values())
        print(f"{'PASS' if ok else 'FAIL'} smoke-train: train loss {first:.3f} -> {last:.3f}")
        return ok
