"""Text generation (`generate`): one prefill over the prompt, then one token per call through
the KV cache; the sampling filters it draws with; and `cli.py sample` on top.

The cache holds `block_size` positions, the context the model was trained on. When it is full
the window slides: the last `block_size // 2` tokens are prefilled into the emptied cache and
decoding goes on, so generation never stops at the context length and never feeds a
learned-position model a position it has not learned. The no-cache equivalent is a full
forward over the same window at every step (see the tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from ..config import SampleConfig
from ..core.config import ModelConfig
from ..core.models import Model
from ..core.params import Params
from .loading import encode_prompt, load_model, sampling_kwargs, unescape
from .steps import DecodeStep, build_decode_step

Stream = Callable[[torch.Tensor], None]
Ban = Callable[[torch.Tensor], torch.Tensor | None]


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of [B, V] logits; dropped entries become -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p`:
    a token stays when the mass of the tokens strictly more likely than it is below `top_p`.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _stop_tensor(stop_ids: int | Collection[int] | None, device: torch.device) -> torch.Tensor:
    ids = [] if stop_ids is None else [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
    return torch.tensor(ids, dtype=torch.long, device=device)


@torch.no_grad()
def generate(
    model: Model,
    params: Params,
    cfg: ModelConfig,
    prompt_ids: torch.Tensor | list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | Collection[int] | None = None,
    stream: Stream | None = None,
    step: DecodeStep | None = None,
    ban: Ban | None = None,
    finished: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate up to `max_new_tokens` tokens after `prompt_ids` ([T] or [B, T]).

    Returns the new tokens [B, N]. Generation ends early once every row has produced one
    of `eos_id` (an id or a set of ids), or `finished(new[B, n])` says so for it (bool [B]);
    rows that stopped earlier are padded with their last token. `stream(tokens[B])` is
    called with each new token as it is chosen. `ban(new[B, n])` returns the tokens the next
    pick may not be (bool [B, V], or None): a pure function of the tokens so far, so the
    draws stay those of `generator`. `step` computes each token after the first
    (`steps.build_decode_step`; eager by default); prefills, of the prompt and of each slid
    window, always run the eager step, as they come at many lengths.
    """
    device = params["wte"].device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    prompt = prompt[None] if prompt.dim() == 1 else prompt
    if prompt.shape[1] == 0:
        raise ValueError("generate needs at least one prompt token (e.g. <bos> or a newline)")
    B, window, keep = prompt.shape[0], cfg.block_size, max(1, cfg.block_size // 2)
    stops = _stop_tensor(eos_id, device)
    prefill = build_decode_step(model, params, cfg)
    one_token = step or prefill
    cache = model.init_cache(cfg, B, window, params["wte"].dtype, device)
    context = prompt[:, -window:]
    logits, cache = prefill(params, context, cfg, cache)
    filled, out = context.shape[1], []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    last = prompt[:, -1]
    for i in range(max_new_tokens):
        banned = None if ban is None else ban(_so_far(out, prompt))
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        token = sample_next(logits, temperature, top_k, top_p, generator)
        token = torch.where(done, last, token)
        out.append(token)
        if stream is not None:
            stream(token)
        done = done | torch.isin(token, stops)
        if finished is not None:
            done = done | finished(_so_far(out, prompt))
        last = token
        can_stop = stops.numel() or finished is not None
        if i == max_new_tokens - 1 or (can_stop and bool(done.all())):
            break
        if filled == window:
            recent = torch.cat([context, *(t[:, None] for t in out)], dim=1)[:, -keep:]
            cache = cache._replace(pos=torch.zeros_like(cache.pos))
            logits, cache = prefill(params, recent, cfg, cache)
            filled = recent.shape[1]
        else:
            logits, cache = one_token(params, token[:, None], cfg, cache)
            filled += 1
    return _so_far(out, prompt)


def _so_far(out: list[torch.Tensor], prompt: torch.Tensor) -> torch.Tensor:
    """The new tokens [B, n] chosen so far (n may be 0)."""
    return torch.stack(out, dim=1) if out else prompt.new_zeros((prompt.shape[0], 0))


class TextStream:
    """Turns streamed token ids into printable text increments.

    Decoding the whole tail at each token and emitting only the new suffix keeps multi-byte
    characters that span several BPE tokens intact (an unfinished one decodes to U+FFFD and
    is held back until complete).
    """

    def __init__(self, decode: Callable[[list[int]], str], write: Callable[[str], Any]) -> None:
        self.decode, self.write = decode, write
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, tokens: torch.Tensor) -> None:
        self.ids.append(int(tokens[0]))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.write(text[self.shown :])
        self.shown = len(text)


# ----------------------------------------------------------------------------- the command


def run(opts: SampleConfig) -> None:
    """`cli.py sample`: print the prompt, then stream each sample's continuation."""
    t0 = time.perf_counter()
    loaded = load_model(opts)
    t1 = time.perf_counter()
    kwargs = sampling_kwargs(opts, loaded)
    setup = {"load_s": t1 - t0, "compile_s": time.perf_counter() - t1 if opts.compile else None}
    prompt = unescape(opts.prompt)
    ids = encode_prompt(loaded, prompt, opts.drop_unknown)
    for i in range(opts.num_samples):
        if i:
            print("\n---")
        print(prompt, end="", flush=True)
        out = TextStream(loaded.tok.decode, lambda s: print(s, end="", flush=True))
        times: list[float] = []

        def on_token(token: torch.Tensor, out: TextStream = out, times: list[float] = times):
            out(token)
            times.append(time.perf_counter())

        start = time.perf_counter()
        new = generate(
            loaded.model, loaded.params, loaded.cfg, ids, max_new_tokens=opts.max_new_tokens,
            eos_id=loaded.tok.eos_id, stream=on_token, **kwargs,
        )  # fmt: skip
        print(flush=True)
        if opts.stats:
            print(stats_line(len(ids), new.shape[1], start, times, **setup), file=sys.stderr)
        setup = {"load_s": None, "compile_s": None}


def stats_line(
    prompt_tokens: int,
    new_tokens: int,
    start: float,
    times: list[float],
    load_s: float | None = None,
    compile_s: float | None = None,
) -> str:
    """One line of timings. Prefill = until the first token is chosen; the first decode
    step is shown apart (it holds torch.compile's compilation when that path runs), and
    the decode rate is the steady one over the steps after it."""
    parts = []
    if load_s is not None:
        parts.append(f"load {load_s:.2f} s")
    if compile_s is not None:
        parts.append(f"compile {compile_s:.2f} s")
    parts += [f"prompt tokens {prompt_tokens}", f"new tokens {new_tokens}",
              f"prefill {(times[0] - start) * 1000:.1f} ms"]  # fmt: skip
    if len(times) >= 2:
        parts.append(f"first decode step {(times[1] - times[0]) * 1000:.1f} ms")
    if len(times) >= 3:
        rate = (len(times) - 2) / (times[-1] - times[1])
        parts.append(f"decode {rate:,.1f} tokens/s")
    parts.append(f"wall {times[-1] - start + (load_s or 0) + (compile_s or 0):.2f} s")
    return ", ".join(parts)
