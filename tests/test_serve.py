"""`cli.py serve` and its scheduler: batched rows against `generate`, and a real server on
localhost driven by the `openai` client, raw HTTP, a schema fuzzer and a browser.

Every wait is bounded: servers are polled with deadlines, clients carry timeouts, and the
processes are killed if they outlive their test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import torch
from conftest import VARIANTS, tiny_config

from yocto_fn import cache as kv
from yocto_fn import cli, models
from yocto_fn.config import SampleConfig
from yocto_fn.formats.tokenizer import CharTokenizer
from yocto_fn.generate.batcher import Batcher, QueueFull
from yocto_fn.generate.jobs import Event, Job, Sampling
from yocto_fn.generate.loading import encode_prompt, load_model
from yocto_fn.generate.sample import generate

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
PROMPTS = ["The ", "Philosophy", "In the beginning", "A", "What is", "It was the", "Hello",
           "Truth and"]  # fmt: skip


# ------------------------------------------------------------------ the per-row cache


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_cache_with_a_position_per_row_equals_a_cache_per_row(variant):
    """Rows at different positions in one batched step give each row's own logits."""
    model, cfg = models.get(variant), tiny_config(block_size=16)
    params = model.init(cfg, 0)
    prompts = [torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
               for n in (5, 2, 9)]  # fmt: skip
    batched = kv.init_cache(cfg, 3, per_row=True)
    own, last = [], []
    for i, p in enumerate(prompts):
        one = model.init_cache(cfg, 1)
        _, one = model.forward(params, p, cfg, cache=one)
        own.append(one)
        _, row = model.forward(params, p, cfg, cache=kv.row(batched, i))
        batched.pos[i] = row.pos
        last.append(p[:, -1:])
    tokens = torch.cat(last)
    for _ in range(3):  # three steps, each row at its own position
        logits, batched = model.forward(params, tokens, cfg, cache=batched)
        for i in range(3):
            ref, own[i] = model.forward(params, tokens[i : i + 1], cfg, cache=own[i])
            torch.testing.assert_close(logits[i], ref[0], atol=1e-5, rtol=0)
        tokens = logits[:, -1].argmax(-1, keepdim=True)
    assert batched.pos.tolist() == [8, 5, 12]


# ------------------------------------------------------------------ the scheduler


@pytest.fixture(scope="module")
def loaded(demo_ckpt):
    return load_model(SampleConfig(ckpt=demo_ckpt, device="cpu"))


def run_jobs(loaded, specs, **batcher_kwargs) -> list[list[Event]]:
    """Submit (prompt, max_tokens, Sampling, job kwargs) specs and iterate to the end."""
    b = Batcher(loaded.model, loaded.params, loaded.cfg, loaded.tok, **batcher_kwargs)
    events: list[list[Event]] = [[] for _ in specs]
    for i, (prompt, n, sampling, extra) in enumerate(specs):
        ids = encode_prompt(loaded, prompt, False)
        b.submit([Job(ids, n, sampling, events[i].append, **extra)])
    deadline = time.monotonic() + 120
    while not all(e and e[-1].finish for e in events):
        assert time.monotonic() < deadline, "the batcher did not finish its jobs"
        b.iterate()
    return events


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_rows_equal_generate(loaded, temperature):
    """Rows joining at different times and lengths, a prompt longer than the context,
    chunked prefills, windows sliding mid-reply and rows moving down as others free: each
    row still gives `generate`'s tokens (sampled rows: with a generator of the same seed;
    their draws follow the context closely, which a small model's greedy text does not)."""
    long_prompt = "The mind is a thing that thinks, and " * 6  # > block_size characters
    prompts = ["The ", long_prompt, "Philosophy is", "A", "Truth"]
    lengths = [150, 140, 40, 160, 30]
    specs = [(p, n, Sampling(temperature, seed=i), {})
             for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))]  # fmt: skip
    events = run_jobs(loaded, specs, max_batch=3, prefill_chunk=16)
    for i, (p, n, ev) in enumerate(zip(prompts, lengths, events, strict=True)):
        ids = encode_prompt(loaded, p, False)
        gen = torch.Generator().manual_seed(i)
        ref = generate(loaded.model, loaded.params, loaded.cfg, ids, max_new_tokens=n,
                       temperature=temperature, generator=gen)  # fmt: skip
        assert text_of(ev) == loaded.tok.decode(ref[0].tolist())
        assert ev[-1].finish == "length" and ev[-1].tokens == n


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_short_prompts_arriving_together_prefill_in_one_forward_and_equal_generate(
    loaded, temperature
):
    """Five prompts of 1-13 characters arrive at once: four fit 64 token rows together
    (right-padded to the longest), the fifth goes alone; every row gives `generate`'s text."""
    prompts = ["The ", "Philosophy is", "A", "Truth", "Hello there"]
    specs = [(p, 40, Sampling(temperature, seed=i), {}) for i, p in enumerate(prompts)]
    b = Batcher(loaded.model, loaded.params, loaded.cfg, loaded.tok, max_batch=8,
                prefill_chunk=64)  # fmt: skip
    events = [[] for _ in specs]
    for i, (p, n, sampling, _) in enumerate(specs):
        b.submit([Job(encode_prompt(loaded, p, False), n, sampling, events[i].append)])
    started = lambda: [r is not None and bool(r.new) for r in b.rows[:5]]  # noqa: E731
    b.iterate()
    assert b.prefills == 1 and started() == [True] * 4 + [False]  # 4 x 13 <= 64 < 5 x 13
    b.iterate()
    assert b.prefills == 2 and all(started())
    while not all(e and e[-1].finish for e in events):
        b.iterate()
    for i, (p, ev) in enumerate(zip(prompts, events, strict=True)):
        ids = encode_prompt(loaded, p, False)
        gen = torch.Generator().manual_seed(i)
        ref = generate(loaded.model, loaded.params, loaded.cfg, ids, max_new_tokens=40,
                       temperature=temperature, generator=gen)  # fmt: skip
        assert text_of(ev) == loaded.tok.decode(ref[0].tolist())


def test_a_seeded_job_draws_the_same_tokens_alone_and_in_company(loaded):
    alone = run_jobs(loaded, [("The ", 60, Sampling(1.0, None, 0.9, 7), {})], max_batch=4)
    specs = [("Hello", 60, Sampling(0.8, 5, None, 3), {}),
             ("The ", 60, Sampling(1.0, None, 0.9, 7), {}),
             ("A", 60, Sampling(1.0, None, None, 7), {})]  # fmt: skip
    company = run_jobs(loaded, specs, max_batch=4)
    assert text_of(alone[0]) == text_of(company[1])
    assert text_of(company[1]) != text_of(company[2])  # same seed, other settings


def test_a_stop_sequence_ends_the_job_and_is_never_shown(loaded):
    ref = text_of(run_jobs(loaded, [("The ", 80, Sampling(0.0), {})])[0])
    stop = ref[20:23]
    cut = ref[: ref.index(stop)]
    events = run_jobs(loaded, [("The ", 80, Sampling(0.0), {"ends": (stop,)})])[0]
    assert text_of(events) == cut and events[-1].finish == "stop"
    shown = ""
    for e in events:  # no increment ever showed a piece of the stop that was later cut
        shown += e.text
        assert cut.startswith(shown)


def test_a_cancelled_job_frees_its_row_for_the_next(loaded):
    b = Batcher(loaded.model, loaded.params, loaded.cfg, loaded.tok, max_batch=1)
    first, second = [], []
    jobs = [Job([1, 2, 3], 1000, Sampling(0.0), first.append),
            Job([1, 2], 5, Sampling(0.0), second.append)]  # fmt: skip
    b.submit(jobs)
    for _ in range(5):
        b.iterate()
    assert b.busy_rows() == 1 and first and not second
    jobs[0].cancel()
    for _ in range(10):
        b.iterate()
    assert second[-1].finish == "length" and len(first) < 10 and not first[-1].finish


def test_a_fault_in_one_job_fails_that_job_only(loaded):
    bad = Sampling(temperature=1.0, top_k=-1)  # topk(-1) raises while picking
    events = run_jobs(loaded, [("The ", 30, Sampling(0.0), {}), ("The ", 30, bad, {})])
    assert events[0][-1].finish == "length" and events[0][-1].tokens == 30
    assert events[1][-1].finish == "error" and "generation failed" in events[1][-1].text


def test_submit_is_all_or_none_within_the_queue_bound(loaded):
    b = Batcher(loaded.model, loaded.params, loaded.cfg, loaded.tok, max_batch=1, max_queue=3)
    job = lambda: Job([1], 5, Sampling(0.0), lambda e: None)  # noqa: E731
    b.submit([job(), job()])
    with pytest.raises(QueueFull):
        b.submit([job(), job()])
    assert b.waiting.qsize() == 2
    b.submit([job()])
    assert b.waiting.qsize() == 3


def test_the_mailbox_delivers_every_event_in_order_with_one_wake_up_per_burst():
    """Events posted while the loop is busy (a decode step's, one per row) reach their
    queues in order, and the loop is woken once for the burst, not once per event."""
    pytest.importorskip("fastapi")
    from yocto_fn.generate.serve_bridge import Mailbox

    async def main() -> tuple[list, list, int]:
        box, queues, wakes = Mailbox(), [asyncio.Queue(), asyncio.Queue()], []
        real = box.loop.call_soon_threadsafe
        box.loop = type("Loop", (), {"call_soon_threadsafe": lambda self, f: (
            wakes.append(1), real(f))})()  # fmt: skip
        burst = lambda n: [box.post(queues[i % 2], i) for i in range(n)]  # noqa: E731
        thread = threading.Thread(target=burst, args=(100,))
        thread.start()
        thread.join(timeout=10)  # the loop is blocked here: every post lands in one burst
        await asyncio.sleep(0)
        got = [[q.get_nowait() for _ in range(q.qsize())] for q in queues]
        return got, wakes, box.armed

    (evens, odds), wakes, armed = asyncio.run(main())
    assert evens == list(range(0, 100, 2)) and odds == list(range(1, 100, 2))
    assert len(wakes) == 1 and not armed


@pytest.mark.slow
def test_the_compiled_steps_equal_eager_at_every_batch_size_without_recompiling(tmp_path):
    """`--compile`: one step per batch size, all built at start-up (torch.compile's graphs, or
    CPU's packaged steps over the shared per-row cache); rows joining and leaving then never
    recompile, and the text is the eager step's."""
    torch._dynamo.reset()
    cfg = tiny_config(vocab_size=40, block_size=24)
    model = models.get("gpt-fast")
    params = model.init(cfg, 0)
    tok = CharTokenizer([chr(48 + i) for i in range(40)])
    specs = [([1, 2, 3], 40, Sampling(1.0, seed=1)), ([4] * 9, 30, Sampling(0.0)),
             ([5, 6], 50, Sampling(0.7, 5, None, 2))]  # fmt: skip

    def run(backend) -> list[str]:
        b = Batcher(model, params, cfg, tok, max_batch=2, backend=backend, cache_dir=tmp_path)
        b.warm_up()
        events = [[] for _ in specs]
        b.submit([Job(ids, n, s, events[i].append) for i, (ids, n, s) in enumerate(specs)])
        with torch._dynamo.config.patch(error_on_recompile=True):
            while not all(e and e[-1].finish for e in events):
                b.iterate()
        return [text_of(e) for e in events]

    eager = run("eager")
    assert run("compiled") == eager
    assert run("packaged") == eager
    assert len(list(tmp_path.glob("decode-*.pt2"))) == 2  # one package per batch size


# ------------------------------------------------------------------ a server on localhost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cli.py serve` in its own process, ready once /healthz answers."""

    def __init__(self, ckpt: Path, *flags: str, key: str | None = KEY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        auth = ["--api-key", key] if key else []
        argv = [sys.executable, "cli.py", "serve", "--ckpt", str(ckpt), "--port",
                str(self.port), "--device", "cpu", *auth, *flags]  # fmt: skip
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"serve did not come up: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=5).json()

    def post(self, path: str, body, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=60, **kw)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def server(demo_ckpt):
    s = Server(demo_ckpt, "--max-batch", "8")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_the_openai_client_completes_and_chats_streamed_and_not(client):
    assert [m.id for m in client.models.list().data] == ["yocto_fn"]
    done = client.completions.create(model="yocto_fn", prompt="The ", max_tokens=12,
                                     temperature=0)  # fmt: skip
    assert len(done.choices[0].text) > 0 and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens == 4
    streamed = client.completions.create(model="yocto_fn", prompt="The ", max_tokens=12,
                                         temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    reply = client.chat.completions.create(
        model="yocto_fn", messages=[{"role": "user", "content": "What is truth?"}],
        max_tokens=20, seed=3, extra_body={"top_k": 20},
    )  # fmt: skip
    text = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant" and text.strip() == text and text
    chunks = client.chat.completions.create(
        model="yocto_fn", messages=[{"role": "user", "content": "What is truth?"}],
        max_tokens=20, seed=3, extra_body={"top_k": 20}, stream=True,
    )  # fmt: skip
    chunks = list(chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_get_the_tokens_of_sample(client, demo_ckpt, capsys):
    """8 greedy requests and 8 seeded ones at once (16 for 8 rows: half wait for a row),
    each against `cli.py sample` with the same prompt, temperature and seed."""
    n = 60
    cases = [(p, 0.0, 1337) for p in PROMPTS] + [(p, 1.0, i) for i, p in enumerate(PROMPTS)]
    expected = {}
    for p, t, seed in cases:
        argv = ["sample", "--ckpt", str(demo_ckpt), "--prompt", p, "--temperature", str(t),
                "--seed", str(seed), "--max-new-tokens", str(n), "--device", "cpu"]  # fmt: skip
        assert cli.main(argv) == 0
        expected[p, t, seed] = capsys.readouterr().out.removeprefix(p).removesuffix("\n")
    got, barrier = {}, threading.Barrier(len(cases))

    def ask(case: tuple[str, float, int]) -> None:
        barrier.wait(timeout=30)
        p, t, seed = case
        got[case] = client.completions.create(model="yocto_fn", prompt=p, max_tokens=n,
                                              temperature=t, seed=seed).choices[0].text  # fmt: skip

    threads = [threading.Thread(target=ask, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == expected


def test_a_quantized_server_gives_the_tokens_of_a_quantized_sample(demo_ckpt, capsys):
    """`serve --quantize int8` serves the int8 weights (what /healthz reports is read off the
    loaded tree): a seeded completion is `sample --quantize int8`'s text."""
    n = 200
    argv = ["sample", "--ckpt", str(demo_ckpt), "--prompt", "The ", "--temperature", "1",
            "--seed", "3", "--max-new-tokens", str(n), "--device", "cpu",
            "--quantize", "int8"]  # fmt: skip
    assert cli.main(argv) == 0
    expected = capsys.readouterr().out.removeprefix("The ").removesuffix("\n")
    s = Server(demo_ckpt, "--quantize", "int8", key=None)
    try:
        assert s.health()["weights"] == "int8"
        body = {"prompt": "The ", "max_tokens": n, "temperature": 1, "seed": 3}
        assert s.post("/v1/completions", body).json()["choices"][0]["text"] == expected
    finally:
        s.close()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"prompt": "The ", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "The ", "temperature": 3}, 400, "temperature"),
        ({"prompt": "The ", "n": 0}, 400, "n"),
        ({"prompt": "The ", "n": 9}, 400, "--max-batch"),
        ({"prompt": "The ", "max_tokens": 4097}, 400, "--max-tokens-limit"),
        ({"prompt": "The ", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "The ", "seed": -1}, 400, "seed"),
        ({"prompt": "The ", "model": "gpt-4"}, 404, "gpt-4"),
        ({"prompt": "Caf\u00e9 \u2603"}, 400, "'\u2603'"),
        ({"prompt": "The ", "logprobs": 2}, 400, "logprobs"),
        ({}, 400, "prompt"),
    ],
)
def test_a_bad_completion_request_gets_a_json_error(server, body, status, says):
    r = server.post("/v1/completions", body)
    assert r.status_code == status
    error = r.json()["error"]
    assert says in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_bad_chat_requests_bodies_and_keys_get_json_errors_and_the_server_serves_on(server):
    r = server.post("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]})
    assert r.status_code == 400 and "user" in r.json()["error"]["message"]
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "\u2603"}]})
    assert r.status_code == 400 and "messages.0.content" in r.json()["error"]["message"]
    as_json = server.headers | {"Content-Type": "application/json"}
    for raw, says in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object")):
        r = httpx.post(server.url + "/v1/completions", content=raw, headers=as_json, timeout=10)
        assert r.status_code == 400 and says in r.json()["error"]["message"]
    r = server.post("/v1/completions", {"prompt": "x" * 300_000})
    assert r.status_code == 413 and "--max-body-kb" in r.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "a"}, headers=headers,
                       timeout=10)  # fmt: skip
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200  # no key needed
    assert server.post("/v1/completions", {"prompt": "a", "max_tokens": 2}).status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    """The row is freed long before its 4,000 tokens would have been generated."""
    steps = server.health()["decode_steps"]
    body = {"prompt": "The ", "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers,
                      timeout=30) as r:  # fmt: skip
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert server.health()["busy_rows"] == 1
    deadline = time.monotonic() + 15
    while server.health()["busy_rows"]:
        assert time.monotonic() < deadline, "the row stayed busy after the client left"
        time.sleep(0.1)
    assert server.health()["decode_steps"] - steps < 2000


def test_a_schema_fuzz_run_finds_no_server_error(demo_ckpt, tmp_path, request):
    """Over a hundred generated requests, valid and not, against the server's own OpenAPI
    document (short replies keep it quick: the point is every status, not the text)."""
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    server = Server(demo_ckpt, "--max-batch", "4", "--max-tokens-limit", "4")
    request.addfinalizer(server.close)
    argv = [str(st), "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", "30", "--seed", "1", "--generation-database", "none",
            "--no-color", "--request-timeout", "30", "-H", f"Authorization: Bearer {KEY}",
            "--report-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    cases = int(re.search(r"(\d+) generated", done.stdout)[1])
    assert cases >= 100, done.stdout[-1000:]
    assert server.health()["status"] == "ok"


def test_the_chat_page_streams_a_reply_in_a_browser(server, tmp_path):
    chromium = shutil.which("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it with apt)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    shot = tmp_path / "chat.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(server.url + "/")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.fill("#text", "What is truth?")
            page.press("#text", "Enter")
            page.wait_for_selector(".assistant[data-state=done]")
            reply = page.inner_text(".assistant")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert reply.strip() and page_is_not_blank(shot)


def page_is_not_blank(png: Path) -> bool:
    from PIL import Image

    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return colours is not None and len(colours) > 50


# ------------------------------------------------------------------ limits and shutdown


def test_a_full_queue_gets_429_and_sigterm_ends_streams_and_exits_0(demo_ckpt):
    s = Server(demo_ckpt, "--max-batch", "1", "--max-queue", "1", "--grace-s", "2", key=None)
    try:
        body = {"prompt": "The ", "max_tokens": 4000, "stream": True}
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(httpx.stream("POST", s.url + "/v1/completions",
                                                     json=body, timeout=30))  # fmt: skip
            lines = first.iter_lines()
            next(lines)  # the first request holds the only row
            deadline = time.monotonic() + 15
            while s.health()["busy_rows"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waiting = threading.Thread(target=lambda: s.post("/v1/completions", body | {
                "stream": False, "max_tokens": 5}))  # fmt: skip
            waiting.start()
            while s.health()["waiting"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            full = s.post("/v1/completions", {"prompt": "a", "max_tokens": 2})
            assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(timeout=30) == 0
            assert time.monotonic() - t0 < 15
            waiting.join(timeout=10)
    finally:
        s.close()


def test_bad_serve_flags_are_one_line_errors(demo_ckpt, capsys):
    for flags, says in ((["--max-batch", "0"], "--max-batch"), (["--port", "70000"], "--port"),
                        (["--api-key", " "], "--api-key")):  # fmt: skip
        assert cli.main(["serve", "--ckpt", str(demo_ckpt), *flags]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert cli.main(["serve", "--ckpt", str(demo_ckpt), "--port", port]) == 2
    assert "pick another --port" in capsys.readouterr().err


def test_the_openapi_document_describes_the_endpoints(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/healthz"} <= set(
        doc["paths"]
    )
    assert json.dumps(doc).count("top_k") >= 2
