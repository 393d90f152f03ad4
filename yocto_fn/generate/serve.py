"""`cli.py serve`: an OpenAI-compatible HTTP server over one checkpoint, and a chat page.

This module is its lifecycle: check the flags and the port, load the checkpoint, build and
warm the decode steps, serve, and stop on SIGINT or SIGTERM. The model runs on the main
thread, which owns a batched KV cache (`batcher.Batcher`); the HTTP server's event loop runs
on a thread of its own (`serve_routes`), where request handlers only queue jobs
(`serve_requests`) and relay their events (`serve_bridge`), so the loop never waits on the
model.

A prompt longer than the context slides as `sample` slides it: the model reads its last
`block_size` tokens (`usage.prompt_tokens` still counts them all).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from ..config import ServeConfig
from ..errors import UserError
from .batcher import Batcher
from .loading import load_model, package_dir
from .serve_requests import Service
from .serve_routes import build_app
from .steps import compile_backend


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before loading anything (uvicorn would exit later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
                            "--port or --host") from None  # fmt: skip


def run(opts: ServeConfig) -> None:
    """Load the checkpoint, warm the decode step, and serve until SIGINT or SIGTERM."""
    check_port(opts.host, opts.port)
    loaded = load_model(opts)
    t0 = time.perf_counter()
    backend = compile_backend(loaded.params["wte"].device) if opts.compile else "eager"
    batcher = Batcher(
        loaded.model, loaded.params, loaded.cfg, loaded.tok, max_batch=opts.max_batch,
        max_queue=opts.max_queue, prefill_chunk=opts.prefill_chunk, backend=backend,
        cache_dir=package_dir(opts.ckpt),
    )  # fmt: skip
    if opts.compile:
        batcher.warm_up()
        print(f"decode steps for batches of {', '.join(map(str, batcher.sizes))} rows ready in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    app = build_app(Service(opts, loaded, batcher))
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            timeout_graceful_shutdown=opts.grace_s)  # fmt: skip
    server = uvicorn.Server(config)
    http = threading.Thread(target=server.run, name="http", daemon=True)

    def on_signal(signum: int, frame: Any) -> None:
        """SIGTERM or Ctrl-C: stop admitting and drain for up to --grace-s; a second
        Ctrl-C cuts the streams at once."""
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    # the model runs here, on the main thread (see `Batcher.run`), and the event loop on its
    # own; uvicorn leaves signals to the main thread when it runs on another
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        http.start()
        batcher.run(alive=http.is_alive)
        http.join(opts.grace_s + 10)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:
        raise UserError(f"the HTTP server did not start on {opts.host}:{opts.port}; pick "
                        "another --port or --host")  # fmt: skip
    print("server stopped", file=sys.stderr, flush=True)
