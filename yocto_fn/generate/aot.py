"""The packaged backend of `steps.build_decode_step`: a compiled one-token decode step that
outlives the process.

`torch.compile` pays tracing, code generation and the compiler's own imports in every
process (about 3 s + 1.6 s on a 2-core CPU), which a sample of a few hundred tokens never
wins back. The packaged step is exported once (`torch.export`, then AOTInductor) into a
package beside the checkpoint; a later run loads it in milliseconds, without importing the
compiler at all.

The package bakes in the weights and is specialised to one shape, dtype and device, so its
key covers everything it depends on: the weights' bytes, the source of the forward pass,
the variant and model config, the batch (and the rows of a per-row cache), the cache length
(the context, `block_size`), the dtype, the device (and GPU model) and the torch version.
The key is written beside the package; a package whose key file is missing, unreadable or
different, or that fails to load, is never trusted: it is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import torch

from .. import fileio, jit
from ..core.cache import KVCache, init_cache
from ..core.config import ModelConfig
from ..core.models import Model
from ..core.params import Params, tree_leaves, tree_unflatten_like
from ..errors import UserError
from ..formats import checkpoint
from . import products

FORMAT = 1  # bump when the exported step's inputs or outputs change


def weights_digest(params: Params) -> str:
    """sha256 over every leaf's name, dtype, shape and bytes (the checkpoint's digest)."""
    return checkpoint.payload_digest(params)


def code_digest() -> str:
    """sha256 of the source the exported step runs (models, layers, cache, rng), so a package
    built by other code is never taken for this code's."""
    core = Path(__file__).parents[1] / "core"
    files = sorted(
        [*core.glob("models/*.py"), core / "layers.py", core / "cache.py", core / "rng.py"]
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b":" + path.read_bytes())
    return digest.hexdigest()


def package_key(
    model: Model,
    params: Params,
    cfg: ModelConfig,
    batch: int,
    device: torch.device,
    rows: int | None = None,
) -> dict[str, Any]:
    """What a package depends on; two steps with equal keys compute the same thing."""
    dtype = params["wte"].dtype
    where = device.type
    if device.type == "cuda":
        where += f":{torch.cuda.get_device_name(device)}:{torch.cuda.get_device_capability(device)}"
    key = {
        "format": FORMAT, "torch": torch.__version__, "variant": model.name,
        "model_config": cfg.to_dict(), "batch": batch, "max_len": cfg.block_size,
        "dtype": str(dtype).removeprefix("torch."), "device": where,
        "weights_sha256": weights_digest(params), "code_sha256": code_digest(),
    }  # fmt: skip
    return key if rows is None else key | {"rows": rows}


class _Step(torch.nn.Module):
    """The decode step as a module for `torch.export`: the weights are its buffers (baked
    into the package), the token, the cache buffers and the position its inputs."""

    def __init__(self, model: Model, params: Params, cfg: ModelConfig) -> None:
        super().__init__()
        self.model, self.cfg, self.tree = model, cfg, params
        for i, leaf in enumerate(tree_leaves(params)):
            self.register_buffer(f"w{i}", leaf)

    def forward(self, tokens, k, v, pos):
        leaves = [getattr(self, f"w{i}") for i in range(len(tree_leaves(self.tree)))]
        p = tree_unflatten_like(self.tree, leaves)
        cache = KVCache(k, v, pos)
        logits, cache = self.model.forward(p, tokens, self.cfg, cache=cache, ops=products.COMPILED)
        return logits[:, -1].float(), cache.pos


class PackagedStep:
    """`step(params, tokens[B, 1], cfg, cache) -> (last logits [B, V], cache)`, the signature
    of every decode step (`steps.DecodeStep`), running a loaded package. The cache's k/v
    buffers are updated in place (the cache contract); the weights are the package's own,
    so `params` must be the tree it was built from."""

    def __init__(self, runner: Any, params: Params) -> None:
        self.runner, self.params = runner, params

    def __call__(
        self, params: Params, tokens: torch.Tensor, cfg: ModelConfig, cache: KVCache
    ) -> tuple[torch.Tensor, KVCache]:
        if params is not self.params:
            raise ValueError("a packaged decode step runs only the weights it was built from")
        logits, pos = self.runner.run([tokens.contiguous(), cache.k, cache.v, cache.pos])
        return logits, cache._replace(pos=pos)


def _load(path: Path, device: torch.device) -> Any:
    """The package's runner: torch's C++ loader, which needs no compiler import (~1.2 s
    saved); the public `aoti_load_package` where that entry point is missing."""
    index = device.index if device.index is not None else (0 if device.type == "cuda" else -1)
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader is not None:
        return loader(str(path), "model", False, 1, index)
    from torch._inductor import aoti_load_package

    compiled = aoti_load_package(str(path))
    return type("Runner", (), {"run": staticmethod(lambda xs: compiled(*xs))})()


def example_cache(
    model: Model, params: Params, cfg: ModelConfig, batch: int, rows: int | None
) -> KVCache:
    """The cache a package is built for: one position for the batch, or with `rows`, a
    per-row cache of `rows` rows that the batch's first `batch` rows step over (a server's)."""
    device, dtype = params["wte"].device, params["wte"].dtype
    if rows is None:
        return model.init_cache(cfg, batch, cfg.block_size, dtype, device)
    full = init_cache(cfg, rows, cfg.block_size, dtype, device, per_row=True)
    return full._replace(pos=full.pos[:batch].clone())


def _build(
    dest: Path,
    model: Model,
    params: Params,
    cfg: ModelConfig,
    batch: int,
    rows: int | None = None,
) -> None:
    """Export and compile the step into `dest`, atomically (a temporary file, then rename)."""
    device = params["wte"].device
    cache = example_cache(model, params, cfg, batch, rows)
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(
            _Step(model, params, cfg), (tokens, cache.k, cache.v, cache.pos)
        )
        from torch._inductor import aoti_compile_and_package
        from torch._inductor.async_compile import shutdown_compile_workers

        jit.use_safe_cxx()
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            built = Path(tmp) / dest.name
            try:
                aoti_compile_and_package(exported, package_path=str(built))
            finally:
                shutdown_compile_workers()  # idle workers would compete with the decode
            fileio.atomic_write_bytes(dest, built.read_bytes())


def load_or_build(
    model: Model,
    params: Params,
    cfg: ModelConfig,
    batch: int,
    cache_dir: Path,
    log: Callable[[str], object],
    rows: int | None = None,
) -> PackagedStep:
    """The packaged step for these weights and shapes: loaded from `cache_dir` when a
    package with the same key is there, else built (once, tens of seconds) and saved.
    With `rows`, the step runs `batch` rows of a per-row cache of `rows` rows."""
    device = params["wte"].device
    key = package_key(model, params, cfg, batch, device, rows)
    key = orjson.loads(fileio.json_bytes(key))
    name = hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]
    cache_dir = _writable(cache_dir, log)
    path, key_path = cache_dir / f"decode-{name}.pt2", cache_dir / f"decode-{name}.json"
    try:
        if orjson.loads(key_path.read_bytes()) == key:
            return PackagedStep(_load(path, device), params)
        log(f"compiled decode step {path}: its key differs; rebuilding")
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - any unreadable or unloadable package is rebuilt
        log(f"compiled decode step {path} unusable ({type(e).__name__}); rebuilding")
    what = "the decode step" if rows is None else f"the {batch}-row decode step"
    log(f"compiling {what} once for these weights (kept in {cache_dir}) ...")
    t0 = time.perf_counter()
    key_path.unlink(missing_ok=True)
    try:
        _build(path, model, params, cfg, batch, rows)
    except Exception as e:  # noqa: BLE001 - the compiler's failures have many types
        reason = (str(e).splitlines() or [""])[0][:120]
        raise UserError(
            f"could not compile the decode step ({type(e).__name__}: {reason}); "
            "run without --compile (a C++ compiler is needed on CPU)"
        ) from None
    fileio.atomic_write_bytes(key_path, fileio.json_bytes(key))
    log(f"compiled in {time.perf_counter() - t0:.1f} s; later runs load it")
    return PackagedStep(_load(path, device), params)


def _writable(cache_dir: Path, log: Callable[[str], object]) -> Path:
    """`cache_dir`, or a folder in the temp dir when the checkpoint's folder is read-only."""
    for where in (cache_dir, Path(tempfile.gettempdir()) / "yocto_fn-compiled"):
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(where, os.W_OK):
            if where != cache_dir:
                log(f"{cache_dir} is not writable; keeping the compiled step in {where}")
            return where
    raise UserError(f"no writable folder for the compiled step ({cache_dir}); drop --compile")
