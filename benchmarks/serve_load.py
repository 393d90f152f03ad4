"""Serving under load: N concurrent streaming clients against `cli.py serve --compile`.

For each shape and weight format a server starts with `--compile --max-batch 16` on a
checkpoint trained for a few steps (the weights' values do not change the work). Each round
runs `cli.py sample --compile --stats` once (the single-stream reference), then, for every N,
N client threads that each stream --requests completions one after another. Rounds
interleave the reference with the server phases; figures are medians over rounds.

Per phase: aggregate tokens/s (tokens received by all clients over the phase's wall time),
time to first token (request sent to first text chunk) and inter-token latency (between
chunks) at p50 and p99, and the single client's steady rate (tokens after the first over
the time since the first), to set against sample's steady decode rate.

    python -m benchmarks serve-load
    python -m benchmarks serve-load --shapes 4/4/128 --quantize none --clients 1 2 --rounds 1

Writes results.jsonl, table.md and serve_load.png to --out-dir.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import torch

from benchmarks import ROOT, checkpoint, cli
from yocto_fn.bench.report import jsonl, plot, save, table
from yocto_fn.plan import probe

SHAPES = {"4/4/128": 128, "6/6/384": 256}  # shape: block
PROMPT = "The "


@dataclass(frozen=True)
class Config:
    """N concurrent streaming clients against `cli.py serve --compile`: tokens/s and latency."""

    shapes: tuple[Literal["4/4/128", "6/6/384"], ...] = tuple(SHAPES)
    quantize: tuple[Literal["none", "int8"], ...] = ("none", "int8")
    clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    requests: int = 2
    """Completions per client per phase."""
    max_tokens: int = 128
    max_batch: int = 16
    rounds: int = 3
    out_dir: Path | None = None
    """Default: benchmarks/results/DATE-cpu-serve."""


class Server:
    def __init__(self, ckpt: Path, quantize: str, max_batch: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "cli.py", "serve", "--ckpt", str(ckpt), "--port", str(port),
                "--device", "cpu", "--compile", "--max-batch", str(max_batch),
                "--quantize", quantize]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 900
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited: {self.proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("serve did not come up in 900 s")
            time.sleep(0.5)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stream_once(conn: http.client.HTTPConnection, max_tokens: int, seed: int) -> dict:
    """One streamed completion over a kept-alive connection: chunk arrival times and the
    tokens it reports. The client is the standard library's, read line by line: on a
    2-core host every client's CPU is taken from the server, and httpx's streaming reader
    cost about 0.6 ms of CPU a token against 0.14 ms here."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    t0, times, tokens = time.perf_counter(), [], 0
    conn.request("POST", "/v1/completions", orjson.dumps(body),
                 {"Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"the server answered {r.status}: {r.read()[:300]!r}")
    while line := r.readline():
        if not line.startswith(b"data: {"):
            continue
        chunk = orjson.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
    return {"start": t0, "times": times, "tokens": tokens}


def connect(url: str) -> http.client.HTTPConnection:
    where = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(where.hostname, where.port, timeout=600)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of process `pid` (Linux /proc; {} elsewhere)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_profile(pid: int, before: dict, after: dict, client_s: float, tokens: int) -> dict:
    """CPU ms per token received: the server's main thread (the model: Python and its share
    of the step), its other threads (the HTTP event loop, the OpenMP workers of the step),
    and the clients; where these sum past the cores' capacity, CPU is the limit."""
    per = lambda s: round(s / max(tokens, 1) * 1e3, 3)  # noqa: E731
    others = sorted((after[t] - before.get(t, 0.0) for t in after if t != pid), reverse=True)
    return {"server_main": per(after.get(pid, 0.0) - before.get(pid, 0.0)),
            "server_others": [per(x) for x in others if x > 0],
            "clients": per(client_s)}  # fmt: skip


def phase(url: str, clients: int, requests: int, max_tokens: int, pid: int) -> dict:
    """`clients` threads, each streaming `requests` completions back to back."""
    results: list[dict] = []
    lock, barrier = threading.Lock(), threading.Barrier(clients)

    def work(c: int) -> None:
        conn = connect(url)
        barrier.wait(timeout=60)
        for r in range(requests):
            one = stream_once(conn, max_tokens, seed=1000 * c + r)
            with lock:
                results.append(one)
        conn.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    cpu0, own0, t0 = thread_cpu(pid), time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall = time.perf_counter() - t0
    cpu = cpu_profile(pid, cpu0, thread_cpu(pid), time.process_time() - own0,
                      sum(r["tokens"] for r in results))  # fmt: skip
    ttft = [r["times"][0] - r["start"] for r in results]
    itl = [b - a for r in results for a, b in zip(r["times"], r["times"][1:], strict=False)]
    steady = [(len(r["times"]) - 1) / (r["times"][-1] - r["times"][0]) for r in results]
    return {"clients": clients, "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "itl_p50": pct(itl, 50),
            "itl_p99": pct(itl, 99), "steady_per_client": statistics.median(steady),
            "cpu_ms_per_token": cpu}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def sample_rate(ckpt: Path, quantize: str, max_tokens: int) -> float:
    """`sample --compile --stats`'s steady decode tokens/s."""
    done = cli("sample", "--ckpt", str(ckpt), "--prompt", PROMPT, "--max-new-tokens",
               str(max_tokens), "--temperature", "0.8", "--compile", "--stats", "--device", "cpu",
               "--quantize", quantize, timeout=1800)  # fmt: skip
    return float(re.search(r"decode ([\d,.]+) tokens/s", done.stderr)[1].replace(",", ""))


def run_config(cfg: Config, root: Path, shape: str, quantize: str) -> list[dict]:
    ckpt = checkpoint(root, shape, SHAPES[shape], batch_size=4, iters=5)
    sample_rate(ckpt, quantize, cfg.max_tokens)  # builds the packaged step once
    server = Server(ckpt, quantize, cfg.max_batch)
    rounds: list[dict] = []
    try:
        pid = server.proc.pid
        phase(server.url, 1, 1, 8, pid)  # warm the connection path
        for r in range(cfg.rounds):
            row = {"sample_steady": sample_rate(ckpt, quantize, cfg.max_tokens)}
            for n in cfg.clients:
                row[n] = phase(server.url, n, cfg.requests, cfg.max_tokens, pid)
            rounds.append(row)
            print(f"{shape} {quantize} round {r + 1}: " + ", ".join(
                f"N={n} {row[n]['tokens_per_s']:.0f} tok/s" for n in cfg.clients),
                flush=True)  # fmt: skip
    finally:
        server.close()
    out = []
    for n in cfg.clients:
        med = {k: statistics.median(r[n][k] for r in rounds) for k in rounds[0][n]
               if k != "cpu_ms_per_token"}  # fmt: skip
        med["cpu_ms_per_token"] = rounds[len(rounds) // 2][n]["cpu_ms_per_token"]
        out.append({"shape": shape, "quantize": quantize, **med,
                    "sample_steady": statistics.median(r["sample_steady"] for r in rounds),
                    "rounds": cfg.rounds, "requests_per_client": cfg.requests,
                    "max_tokens": cfg.max_tokens, "max_batch": cfg.max_batch})  # fmt: skip
    return out


def load_table(rows: list[dict]) -> str:
    """A row per shape, weights and client count; then each configuration's single client
    against `sample --compile`, with the CPU each token cost."""
    out = []
    for r in rows:
        one = next(x for x in rows if x["shape"] == r["shape"] and x["quantize"] == r["quantize"]
                   and x["clients"] == 1)  # fmt: skip
        out.append((r["shape"], weights(r["quantize"]), r["clients"], f"{r['tokens_per_s']:,.0f}",
                    f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x",
                    f"{r['ttft_p50'] * 1e3:.0f} / {r['ttft_p99'] * 1e3:.0f}",
                    f"{r['itl_p50'] * 1e3:.1f} / {r['itl_p99'] * 1e3:.1f}",
                    f"{r['steady_per_client']:,.0f}"))  # fmt: skip
    head = ("shape", "weights", "clients", "tokens/s", "vs 1 client", "TTFT p50 / p99 ms",
            "ITL p50 / p99 ms", "per-client steady tok/s")  # fmt: skip
    lines = [table(head, out, "llrrrrrr"), ""]
    for r in (r for r in rows if r["clients"] == 1):
        lines.append(f"- {r['shape']} {r['quantize']}: one client's steady "
                     f"{r['steady_per_client']:,.0f} tok/s against `sample --compile` "
                     f"{r['sample_steady']:,.0f} tok/s "
                     f"({r['steady_per_client'] / r['sample_steady']:.2f}x); CPU ms per token: "
                     f"{cpu_line(r['cpu_ms_per_token'])}")  # fmt: skip
    return "\n".join(lines) + "\n"


def weights(quantize: str) -> str:
    return "fp32" if quantize == "none" else quantize


def cpu_line(cpu: dict) -> str:
    others = " + ".join(f"{x:.2f}" for x in cpu["server_others"]) or "0"
    return (f"server main thread {cpu['server_main']:.2f}, other server threads {others}, "
            f"clients {cpu['clients']:.2f}")  # fmt: skip


def load_plot(rows: list[dict]) -> bytes:
    """Aggregate tokens/s and p99 time to first token against the number of clients."""

    def draw(axes) -> None:
        for key in dict.fromkeys((r["shape"], r["quantize"]) for r in rows):
            rs = [r for r in rows if (r["shape"], r["quantize"]) == key]
            label = f"{key[0]} {weights(key[1])}"
            n = [r["clients"] for r in rs]
            axes[0, 0].plot(n, [r["tokens_per_s"] for r in rs], marker="o", label=label)
            axes[0, 1].plot(n, [r["ttft_p99"] * 1e3 for r in rs], marker="o", label=label)
        names = ("aggregate tokens/s", "time to first token, p99 (ms)")
        for ax, y in zip(axes[0], names, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent streaming clients")
            ax.set_ylabel(y)
            ax.grid(alpha=0.3)
        axes[0, 0].legend()

    return plot(draw, 1, 2, (11, 4.2))


def run(cfg: Config) -> None:
    out = cfg.out_dir or Path(f"benchmarks/results/{dt.date.today()}-cpu-serve")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in cfg.shapes:
            for q in cfg.quantize:
                rows += run_config(cfg, Path(tmp), shape, q)
    meta = {"cpu": probe.device_name(torch.device("cpu")), "date": str(dt.date.today())}
    text = load_table(rows)
    save(out, {"results.jsonl": jsonl(r | meta for r in rows), "table.md": text,
               "serve_load.png": load_plot(rows)})  # fmt: skip
    print(text)
