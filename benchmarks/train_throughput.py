"""Training throughput (tokens/s) of every variant against an nn.Module reference.

Contenders: each functional variant eager and compiled (`make_train_step(compile=True)`),
`gpt-fast` eager through `torch.func.grad_and_value` alone, and the nn.Module reference
(`reference_module.py`) eager and compiled. All run in one process, interleaved round by
round, so machine noise hits every contender alike; the median over rounds is reported
with the min-max spread. Prints a table, then one JSON line per contender.

    python benchmarks/train_throughput.py            # 4 layers/4 heads/128 dim, block 128
    python benchmarks/train_throughput.py --rounds 3 --steps 2 --skip-compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_module import ReferenceGPT, make_optimizer, train_step  # noqa: E402

from yocto_fn import models, optim  # noqa: E402
from yocto_fn.config import ModelConfig  # noqa: E402
from yocto_fn.train import make_train_step  # noqa: E402

LR, WEIGHT_DECAY, CLIP = 3e-4, 0.1, 1.0


def functional_runner(name: str, cfg: ModelConfig, batch, **step_kw) -> Callable[[], None]:
    model = models.get(name)
    step = make_train_step(model, cfg, optim.AdamW(weight_decay=WEIGHT_DECAY), **step_kw)
    state = {"params": model.init(cfg, 0)}
    state["opt"] = optim.init(state["params"])

    def run() -> None:
        state["params"], state["opt"], metrics = step(
            state["params"], state["opt"], batch, LR, None
        )
        metrics["loss"].item()

    return run


def reference_runner(cfg: ModelConfig, batch, compile: bool) -> Callable[[], None]:
    model = ReferenceGPT(cfg)
    opt = make_optimizer(model, LR, WEIGHT_DECAY)
    module = torch.compile(model) if compile else model

    def run() -> None:
        train_step(module, opt, *batch, CLIP).item()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over)")
    ap.add_argument("--steps", type=int, default=3, help="train steps per contender per round")
    ap.add_argument("--skip-compile", action="store_true", help="eager contenders only")
    args = ap.parse_args()

    cfg = ModelConfig(
        vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
        n_head=args.n_head, n_embd=args.n_embd, dropout=0.0,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.block_size + 1), generator=gen)
    batch = (data[:, :-1].contiguous(), data[:, 1:].contiguous())

    runners: dict[tuple[str, str], Callable[[], None]] = {}
    for name in models.NAMES:
        runners[(name, "eager")] = functional_runner(name, cfg, batch)
    runners[("gpt-fast", "eager torch.func")] = functional_runner(
        "gpt-fast", cfg, batch, eager_autograd=False
    )
    runners[("reference", "eager")] = reference_runner(cfg, batch, compile=False)
    if not args.skip_compile:
        for name in models.NAMES:
            runners[(name, "compiled")] = functional_runner(name, cfg, batch, compile=True)
        runners[("reference", "compiled")] = reference_runner(cfg, batch, compile=True)

    warmup_s = {}
    for key, run in runners.items():
        t0 = time.perf_counter()
        run()
        run()
        warmup_s[key] = time.perf_counter() - t0
        print(f"warm-up {key[0]:>10} {key[1]:<17} {warmup_s[key]:7.1f} s", file=sys.stderr)

    tokens = args.steps * args.batch_size * cfg.block_size
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run()
            rates[key].append(tokens / (time.perf_counter() - t0))

    base = statistics.median(rates[("reference", "eager")])
    print(
        f"\n{'variant':<10} {'mode':<17} {'tokens/s':>9} {'min':>9} {'max':>9} {'vs ref eager':>12}"
    )
    rows = []
    for (name, mode), values in rates.items():
        med = statistics.median(values)
        print(
            f"{name:<10} {mode:<17} {med:9.0f} {min(values):9.0f} {max(values):9.0f} "
            f"{med / base:11.2f}x"
        )
        rows.append(
            {
                "variant": name, "mode": mode, "device": "cpu", "dtype": "float32",
                "tokens_per_s": round(med, 1), "min": round(min(values), 1),
                "max": round(max(values), 1), "ratio_vs_reference_eager": round(med / base, 3),
                "repeats": args.rounds, "steps_per_repeat": args.steps,
                "warmup_s": round(warmup_s[(name, mode)], 1), "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "config": cfg.to_dict() | {"batch_size": args.batch_size},
            }
        )  # fmt: skip
    print()
    for row in rows:
        print(orjson.dumps(row).decode())


if __name__ == "__main__":
    main()
