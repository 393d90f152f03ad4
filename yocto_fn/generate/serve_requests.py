"""What a request asks of the batcher: the server's limits checked, the prompt as ids, and
one job per choice with its sampling settings.

A completion's prompt is encoded as `cli.py sample` encodes it, and a chat by the chat
template, as `cli.py chat` and training render it (`chat_template.prompt`): the oldest turns
are dropped to leave room for the reply.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

import torch

from ..config import ServeConfig
from ..core.params import tree_leaves
from ..formats import chat_template
from ..formats import tokenizer as tokenizers
from . import chat
from .batcher import Batcher, QueueFull
from .jobs import Event, Job, Sampling
from .loading import Loaded, encode_prompt, system_prompt
from .serve_api import ApiError, ChatRequest, CompletionRequest, Sampled, conversation
from .serve_bridge import Mailbox


class Service:
    """What the routes share: the loaded model, the batcher and the limits."""

    def __init__(self, opts: ServeConfig, loaded: Loaded, batcher: Batcher) -> None:
        self.opts, self.loaded, self.batcher = opts, loaded, batcher
        self.masks = chat.reply_masks(loaded.tok, loaded.params["wte"].device)
        self.system = system_prompt(opts.system_prompt, loaded)
        self.started = int(time.time())
        self.mailbox: Mailbox | None = None  # made when serving starts, on its event loop
        dtypes = {leaf.dtype for leaf in tree_leaves(loaded.params)}
        wte = str(loaded.params["wte"].dtype).removeprefix("torch.")
        self.weights = "int8" if torch.int8 in dtypes else wte  # what is loaded, not the flag

    # ------------------------------------------------------------------ request checks

    def check(self, req: Sampled) -> int:
        """Server-side limits of a request; returns its max_tokens."""
        if req.model not in (None, "", self.opts.model_id):
            raise ApiError(404, f"model {req.model!r} is not served here; GET /v1/models "
                           f"lists {self.opts.model_id!r}", param="model",
                           code="model_not_found")  # fmt: skip
        if req.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        limit = self.opts.max_tokens_limit
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        max_tokens = max_tokens or self.opts.max_new_tokens
        if max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}; at most {limit} "
                           "(--max-tokens-limit)", param="max_tokens")  # fmt: skip
        return max_tokens

    def known_chars(self, text: str, param: str) -> None:
        tok = self.loaded.tok
        if isinstance(tok, tokenizers.CharTokenizer):
            missing = tok.unknown(text)
            if missing:
                shown = " ".join(repr(c) for c in missing[:10])
                raise ApiError(400, f"{param} has characters outside the model's vocabulary: "
                               f"{shown}; remove them", param=param)  # fmt: skip

    def sampling(self, req: Sampled, index: int) -> Sampling:
        """Request values over the server's defaults; choice i of a seeded request draws
        with seed + i, an unseeded one with a fresh random seed."""
        o = self.opts
        temperature = o.temperature if req.temperature is None else req.temperature
        top_k = o.top_k if req.top_k is None else req.top_k
        top_p = o.top_p if req.top_p is None else req.top_p
        seed = secrets.randbits(62) if req.seed is None else (req.seed + index) % 2**63
        return Sampling(temperature, top_k or None, top_p or None, seed)

    # ------------------------------------------------------------------ the two kinds

    def completion_prompts(self, req: CompletionRequest) -> list[tuple[str, list[int]]]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for i, p in enumerate(prompts):
            self.known_chars(p, "prompt" if isinstance(req.prompt, str) else f"prompt.{i}")
        return [(p, encode_prompt(self.loaded, p, False)) for p in prompts]

    def chat_prompt(self, req: ChatRequest, max_tokens: int) -> list[int]:
        """The conversation as `cli.py chat` lays it out; the last message is the user's."""
        messages = conversation(req.messages, self.system)
        for i, m in enumerate(req.messages):
            self.known_chars(chat_template.clean(m.content), f"messages.{i}.content")
        block = self.loaded.cfg.block_size
        budget = block - min(max_tokens, block // 2)
        return chat_template.prompt(self.loaded.tok, messages, budget)

    def submit(self, jobs: list[Job]) -> None:
        """Queue the request's jobs, all or none; a full queue is a 429 to retry."""
        try:
            self.batcher.submit(jobs)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy ({exc}); retry shortly", "rate_limit_error",
                           code="queue_full") from None  # fmt: skip

    def jobs(self, prompts: Sequence[list[int]], req: Sampled, max_tokens: int, *,
             chat_reply: bool, emit: Callable[[int, Event], None]) -> list[Job]:  # fmt: skip
        """One job per choice: prompt p's choices are indices p * n ... p * n + n - 1."""
        total = len(prompts) * req.n
        if total > self.batcher.max_batch:
            raise ApiError(400, f"{total} choices asked (prompts x n); at most "
                           f"{self.batcher.max_batch} (--max-batch)", param="n")  # fmt: skip
        ends = tuple(req.stop) + (chat_template.REPLY_ENDS if chat_reply else ())
        out = []
        for p, ids in enumerate(prompts):
            for j in range(req.n):
                i = p * req.n + j
                out.append(Job(ids, max_tokens, self.sampling(req, i),
                               lambda ev, i=i: emit(i, ev), ends=ends, strip=chat_reply,
                               masks=self.masks if chat_reply else None))  # fmt: skip
        return out


def wants_usage(req: Sampled) -> bool:
    """Whether a streamed reply ends with a usage chunk (`stream_options.include_usage`)."""
    options = getattr(req, "stream_options", None)
    return isinstance(options, dict) and bool(options.get("include_usage"))
