"""The one-token decode step, built for a backend: the single place that decides how a token
is computed.

Every step has one signature, `step(params, tokens[B, T], cfg, cache) -> (last logits [B, V],
cache)`, and writes the cache's k/v in place (the cache contract), so `generate`, `chat` and
the batcher take any of them:

- `eager`: the forward pass as written; it also serves prefills (any T).
- `compiled`: torch.compile of the same step. It is called with one token and a
  preallocated cache whose position is a tensor, so one graph serves every position: it
  compiles once per variant and batch size, never per token.
- `cuda-graph`: the compiled step in `reduce-overhead` mode, replayed as a CUDA graph, so a
  token costs one graph launch instead of a launch per kernel (on other devices it compiles
  as `compiled` does).
- `packaged`: the step exported ahead of time into a package beside the checkpoint
  (`aot.py`), loaded by later processes in milliseconds without importing the compiler.

`compile_backend` says which of them `--compile` means on a device.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from .. import jit
from ..core.cache import KVCache
from ..core.config import ModelConfig
from ..core.models import Model
from ..core.params import Params, tree_leaves
from . import aot, products

Backend = Literal["eager", "compiled", "cuda-graph", "packaged"]
DecodeStep = Callable[[Params, torch.Tensor, ModelConfig, KVCache], tuple[torch.Tensor, KVCache]]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def build_decode_step(
    model: Model,
    params: Params,
    cfg: ModelConfig,
    backend: Backend = "eager",
    *,
    batch: int = 1,
    rows: int | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], object] = _to_stderr,
) -> DecodeStep:
    """The decode step of `model` over `params` on `backend`.

    The in-process backends (eager, compiled, cuda-graph) run any shape and any weights of
    the variant, and are built once per process and variant, so a second `generate` reuses
    the first one's compiled graphs. The packaged step is specialised to these weights and to
    `batch` rows (of a per-row cache of `rows` rows, a server's; one position for the batch
    when None): it is loaded from `cache_dir` when a package with the same key is there,
    else built once and saved there, and `log` hears about builds and rebuilds.
    """
    if backend != "packaged":
        return _in_process(model, backend)
    if cache_dir is None:
        raise ValueError("the packaged decode step needs a cache_dir to keep its package in")
    return aot.load_or_build(model, params, cfg, batch, cache_dir, log, rows)


def compile_backend(device: torch.device) -> Backend:
    """What `--compile` builds on `device`. CPU: the packaged step, since torch.compile's
    tracing, code generation and imports (about 4.6 s on 2 cores) outweigh a sample of a few
    hundred tokens, and the package also skips torch.compile's Python wrappers (about 0.4 ms
    of a 1.3 ms token at 4/4/128). CUDA: the CUDA-graph step, as a batch-1 step at these sizes
    is bound by kernel launches (packages are not used there, as loading one can crash the
    process on CUDA: docs/gpu.md). Elsewhere: the compiled step."""
    if device.type == "cpu":
        return "packaged"
    return "cuda-graph" if device.type == "cuda" else "compiled"


@functools.cache
def _in_process(model: Model, backend: Backend) -> DecodeStep:
    """One step per variant and backend for the whole process (see `build_decode_step`)."""

    def step(params: Params, tokens: torch.Tensor, cfg: ModelConfig, cache: KVCache):
        ops = products.decode_ops(params, compiled=backend != "eager")
        logits, cache = model.forward(params, tokens, cfg, cache=cache, ops=ops)
        return logits[:, -1].float(), cache

    if backend == "eager":
        return step
    if backend == "compiled":
        return jit.compile(step)
    if backend == "cuda-graph":
        return _graph_safe(jit.compile(step, mode="reduce-overhead"))
    raise ValueError(f"unknown decode backend {backend!r}")


def _graph_safe(compiled: DecodeStep) -> DecodeStep:
    """A `mode="reduce-overhead"` step made safe to replay as a CUDA graph.

    - The weights and the cache's k/v buffers are marked static: the graph reads them where
      they lie, instead of copying every weight into its own buffers before each token.
      They are marked without a guard, so a new cache (the next `generate` call) or new
      weights re-record the graph rather than recompile the step.
    - Each call starts a new graph step, and the logits and the new position are copied out
      of the graph's memory, which its next replay overwrites: what the caller keeps stays
      valid. The k/v writes stay in place, in the caller's buffers.
    """

    def step(params: Params, tokens: torch.Tensor, cfg: ModelConfig, cache: KVCache):
        for t in (*tree_leaves(params), cache.k, cache.v):
            torch._dynamo.mark_static_address(t)
        torch.compiler.cudagraph_mark_step_begin()
        logits, cache = compiled(params, tokens, cfg, cache)
        return logits.clone(), cache._replace(pos=cache.pos.clone())

    return step
