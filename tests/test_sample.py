"""Generation: cache == no cache past block_size, filtering, determinism, compile, CLIs."""

import dataclasses
import io
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from conftest import VARIANTS, real_text, tiny_config
from torch._dynamo.utils import counters

from yocto_fn import cli, models
from yocto_fn.config import ChatConfig
from yocto_fn.core.params import to as params_to
from yocto_fn.core.params import tree_leaves as params_leaves
from yocto_fn.generate import steps
from yocto_fn.generate.chat import Conversation
from yocto_fn.generate.loading import load_model
from yocto_fn.generate.sample import filter_logits, generate


def reference_greedy(model, params, cfg, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with a full forward over the context window at every step, no cache.

    The window: the last block_size prompt tokens; once it would exceed block_size it
    restarts from the last block_size // 2 tokens (the documented sliding rule).
    """
    seq = list(prompt)
    start = max(0, len(seq) - cfg.block_size)
    for _ in range(n):
        if len(seq) - start > cfg.block_size:
            start = len(seq) - cfg.block_size // 2
        logits, _ = model.forward(params, torch.tensor([seq[start:]]), cfg)
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_greedy_equals_uncached_past_block_size(variant):
    cfg = tiny_config(block_size=12)
    model = models.get(variant)
    params = model.init(cfg, 3)
    prompt = [1, 5, 7, 2, 9]
    want = reference_greedy(model, params, cfg, prompt, 40)
    got = generate(model, params, cfg, prompt, max_new_tokens=40, temperature=0)
    assert got.shape == (1, 40) and got[0].tolist() == want


def test_prompt_longer_than_block_size_keeps_its_last_window():
    cfg = tiny_config(block_size=8)
    model = models.get("gpt")
    params = model.init(cfg, 0)
    prompt = list(range(1, 20))
    got = generate(model, params, cfg, prompt, max_new_tokens=10, temperature=0)
    assert got[0].tolist() == reference_greedy(model, params, cfg, prompt, 10)


def test_top_k_1_is_greedy():
    cfg = tiny_config()
    model = models.get("gpt-plus")
    params = model.init(cfg, 0)
    greedy = generate(model, params, cfg, [3, 4], max_new_tokens=20, temperature=0)
    gen = torch.Generator().manual_seed(0)
    top1 = generate(model, params, cfg, [3, 4], max_new_tokens=20, top_k=1, generator=gen)
    assert torch.equal(greedy, top1)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    kept = lambda p: torch.isfinite(filter_logits(probs.log(), top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.81) == [False, True, True, True]
    assert kept(1.0) == [True] * 4
    both = torch.isfinite(filter_logits(probs.log(), top_k=2, top_p=0.99))[0].tolist()
    assert both == [False, True, False, True]


def test_same_seed_same_tokens_and_other_seed_other_tokens():
    cfg = tiny_config()
    model = models.get("gpt-fast")
    params = model.init(cfg, 0)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return generate(model, params, cfg, [1], max_new_tokens=30, generator=gen)

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_eos_stops_generation():
    cfg = tiny_config()
    model = models.get("gpt")
    params = model.init(cfg, 0)
    full = generate(model, params, cfg, [2, 3], max_new_tokens=20, temperature=0)[0].tolist()
    eos = full[3]
    first = full.index(eos)
    stopped = generate(model, params, cfg, [2, 3], max_new_tokens=20, temperature=0, eos_id=eos)
    assert stopped[0].tolist() == full[: first + 1]


def test_streamed_tokens_equal_returned_tokens():
    cfg = tiny_config()
    model = models.get("gpt-plus")
    params = model.init(cfg, 0)
    seen = []
    out = generate(model, params, cfg, [1, 2], max_new_tokens=25, temperature=0,
                   stream=lambda t: seen.append(int(t[0])))  # fmt: skip
    assert out[0].tolist() == seen


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize(
    ("backend", "device"), [("compiled", "cpu"), pytest.param("cuda-graph", "cuda", marks=CUDA)]
)
def test_the_in_process_backends_decode_as_eager_without_recompiling(backend, device):
    """Greedy tokens of the compiled and CUDA-graph steps are eager's, through two slides of
    the window, and a second `generate` reuses the first one's graphs. (The packaged step
    is checked against eager in tests/test_aot.py, where a real package is built.)"""
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config(block_size=12)
    model = models.get("gpt-fast")
    params = params_to(model.init(cfg, 0), device)
    step = steps.build_decode_step(model, params, cfg, backend)
    assert steps.build_decode_step(model, params, cfg, backend) is step  # one per process
    kw = dict(max_new_tokens=30, temperature=0)  # 30 tokens: slides past block_size twice
    eager = generate(model, params, cfg, [1, 2, 3], **kw)
    warm = generate(model, params, cfg, [1, 2, 3], max_new_tokens=3, temperature=0, step=step)
    frames = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(model, params, cfg, [1, 2, 3], step=step, **kw)
    assert frames >= 1 and torch.equal(eager[:, :3], warm)
    assert torch.equal(eager, compiled)
    assert counters["stats"]["unique_graphs"] == frames


def test_the_cuda_graph_step_copies_what_the_graph_overwrites_and_marks_the_buffers_static(
    monkeypatch,
):
    """A CUDA graph's outputs live in memory its next replay overwrites. The cuda-graph step
    compiles in reduce-overhead mode and must hand back copies (here a stand-in for the
    compiled step returns one shared buffer, as a replayed graph does), advance the caller's
    own position, and mark weights and k/v static (read in place)."""
    from yocto_fn import jit

    cfg = tiny_config(block_size=12)
    model = models.get("gpt")
    params = model.init(cfg, 0)
    eager = steps.build_decode_step(model, params, cfg)
    shared = {"logits": torch.zeros(1, cfg.vocab_size), "pos": torch.zeros((), dtype=torch.long)}
    modes = []

    def replay(p, tokens, cfg, cache):
        logits, cache = eager(p, tokens, cfg, cache)
        shared["logits"].copy_(logits)
        shared["pos"].copy_(cache.pos)
        return shared["logits"], cache._replace(pos=shared["pos"])

    monkeypatch.setattr(jit, "compile", lambda fn, mode=None: modes.append(mode) or replay)
    stand_in = model._replace(name=f"stand-in {id(replay)}")  # not a variant built before
    step = steps.build_decode_step(stand_in, params, cfg, "cuda-graph")
    assert modes == ["reduce-overhead"]
    cache = model.init_cache(cfg, 1, device="cpu")
    first, cache = step(params, torch.tensor([[1]]), cfg, cache)
    kept_pos = cache.pos
    second, cache = step(params, torch.tensor([[2]]), cfg, cache)
    ref_cache = model.init_cache(cfg, 1, device="cpu")
    ref_first, ref_cache = eager(params, torch.tensor([[1]]), cfg, ref_cache)
    assert torch.equal(first, ref_first) and not torch.equal(first, second)
    assert int(kept_pos) == 1 and int(cache.pos) == 2
    static = [*params_leaves(params), cache.k, cache.v]
    assert all(getattr(t, "_dynamo_static_input_type", None) for t in static)


def test_compile_picks_the_package_on_cpu_and_cuda_graphs_on_cuda():
    """What --compile means per device; a packaged step needs a folder to keep it in."""
    pick = lambda kind: steps.compile_backend(torch.device(kind))  # noqa: E731
    assert (pick("cpu"), pick("cuda"), pick("meta")) == ("packaged", "cuda-graph", "compiled")
    cfg = tiny_config()
    model = models.get("gpt")
    with pytest.raises(ValueError, match="cache_dir"):
        steps.build_decode_step(model, model.init(cfg, 0), cfg, "packaged")


# ----------------------------------------------------------------------------- CLIs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    corpus = root / "corpus.txt"
    corpus.write_text(real_text()[:30_000] + "\n\nSystem: User: Assistant:\n", encoding="utf-8")
    src = ("--text-path", str(corpus))
    assert cli.main(["prepare-char", *src, "--out-dir", str(root / "char")]) == 0
    assert cli.main(["prepare-tokenizer", *src, "--out-dir", str(root / "tok"),
                     "--vocab-size", "400"]) == 0  # fmt: skip
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "64",
            "--batch-size", "4", "--max-iters", "2", "--eval-iters", "1"]  # fmt: skip
    out = {}
    for mode, model in (("char", "gpt-plus"), ("token", "gpt")):
        data = root / ("char" if mode == "char" else "tok")
        argv = ["train", "--mode", mode, "--data-dir", str(data), "--model", model,
                "--ckpt-dir", str(root / mode), *tiny]  # fmt: skip
        assert cli.main(argv + ["--ckpt-dir", str(root / f"run-{mode}")]) == 0
        out[mode] = root / f"run-{mode}" / "latest.pt"
    return out


@pytest.mark.parametrize("mode", ["char", "token"])
def test_sample_needs_only_the_checkpoint(checkpoints, mode, capsys):
    argv = ["sample", "--ckpt", str(checkpoints[mode]), "--max-new-tokens", "20",
            "--prompt", "The\\nmodule", "--stats", "--num-samples", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("The\nmodule") and out.count("The\nmodule") == 2
    assert out.count("\n---\nThe\nmodule") == 1
    assert "prompt tokens" in err and "tokens/s" in err
    load = [float(line.split("load ")[1].split(" s")[0]) for line in err.splitlines()
            if line.startswith("load ")]  # fmt: skip
    assert len(load) == 1 and 0 <= load[0] < 60  # the first sample's line shows the load


def test_stats_line_reports_each_phase():
    """Prefill until the first token, the first decode step apart, the steady rate after
    it, and a wall time that includes loading and compiling."""
    from yocto_fn.generate.sample import stats_line

    assert stats_line(5, 4, 10.0, [10.1, 10.3, 10.4, 10.5], load_s=0.5, compile_s=1.25) == (
        "load 0.50 s, compile 1.25 s, prompt tokens 5, new tokens 4, prefill 100.0 ms, "
        "first decode step 200.0 ms, decode 10.0 tokens/s, wall 2.25 s"
    )
    assert stats_line(3, 2, 0.0, [0.25, 0.5]) == (
        "prompt tokens 3, new tokens 2, prefill 250.0 ms, first decode step 250.0 ms, wall 0.50 s"
    )
    assert stats_line(3, 3, 0.0, [0.25, 0.5, 1.0]) == (
        "prompt tokens 3, new tokens 3, prefill 250.0 ms, first decode step 250.0 ms, "
        "decode 2.0 tokens/s, wall 1.00 s"
    )
    assert (
        stats_line(3, 1, 0.0, [0.25])
        == "prompt tokens 3, new tokens 1, prefill 250.0 ms, wall 0.25 s"
    )


def test_text_stream_holds_back_a_character_split_across_tokens():
    """Byte-level BPE splits an unseen character into byte tokens; the stream shows it only
    once whole, never a replacement character."""
    from yocto_fn.formats.tokenizer import train_bpe
    from yocto_fn.generate.sample import TextStream

    tok = train_bpe(["plain ascii text only, nothing else"], 300)
    ids = tok.encode("a☃b")
    assert len(ids) >= 5  # a, three bytes of the snowman, b
    pieces: list[str] = []
    stream = TextStream(tok.decode, pieces.append)
    for i in ids:
        stream(torch.tensor([i]))
    assert "".join(pieces) == "a☃b" and "☃" in pieces
    assert not any("\ufffd" in p for p in pieces)


def test_the_dropped_characters_warning_names_the_first_ten(capsys):
    from yocto_fn.formats.tokenizer import CharTokenizer
    from yocto_fn.generate.loading import drop_unknown_chars

    greek = [chr(0x3B1 + i) for i in range(11)]
    assert drop_unknown_chars(CharTokenizer(list("ab ")), "a " + "".join(greek) + "b") == "a b"
    shown = " ".join(repr(c) for c in greek[:10])
    assert (
        capsys.readouterr().err == f"warning: dropped characters not in the vocabulary: {shown}\n"
    )


def test_sample_same_seed_same_text(checkpoints, capsys):
    texts = []
    for seed in ("1", "1", "2"):
        argv = ["sample", "--ckpt", str(checkpoints["char"]), "--seed", seed, "--prompt", "a"]
        assert cli.main(argv) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]


def test_unknown_prompt_characters(checkpoints, capsys):
    argv = ["sample", "--ckpt", str(checkpoints["char"]), "--prompt", "snow ☃ man"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'☃'" in err
    assert cli.main([*argv, "--drop-unknown"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("snow ☃ man") and "dropped" in err


def test_sample_bad_inputs(checkpoints, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (["--ckpt", str(bad)], "is truncated or not a checkpoint"),
        (["--ckpt", str(tmp_path / "missing.pt")], "not found"),
        (["--ckpt", str(checkpoints["char"]), "--mode", "token"], "char-level"),
        (["--ckpt", str(checkpoints["char"]), "--top-p", "1.5"], "--top-p"),
        (["--ckpt", str(checkpoints["char"]), "--ema"], "EMA"),
    ]
    for argv, needle in cases:
        assert cli.main(["sample", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("mode", ["char", "token"])
def test_chat_answers_piped_turns_and_exits_on_eof(checkpoints, mode, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n/reset\nwhat is a module?\n"))
    argv = ["chat", "--ckpt", str(checkpoints[mode]), "--max-new-tokens", "16"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("Assistant:") == 2 and "(history cleared)" in out


def test_chat_trims_the_oldest_turns_and_keeps_the_system_prompt(checkpoints):
    loaded = load_model(ChatConfig(ckpt=checkpoints["char"]))
    convo = Conversation(loaded.tok, "hi", budget=loaded.cfg.block_size - 4)
    for i in range(10, 20):
        convo.add(f"q{i}", f"a{i}")
    ids = convo.prompt_ids("end")
    text = loaded.tok.decode(ids)
    assert len(ids) <= loaded.cfg.block_size - 4
    assert text == "System: hi\nUser: q19\nAssistant: a19\n\nUser: end\nAssistant:"
    convo.reset()
    assert loaded.tok.decode(convo.prompt_ids("end")) == "System: hi\nUser: end\nAssistant:"


@pytest.mark.parametrize(
    ("mode", "stop"), [("char", "\nUser:"), ("char", "\n\n"), ("token", "<eos>")]
)
def test_chat_reply_ends_at_a_turn_marker_blank_line_or_eos(
    checkpoints, mode, stop, monkeypatch, capsys
):
    """A model scripted to answer "ok", then an end, then more text: the reply printed and
    kept in the history is "ok", and generation ends at the end (no further forward)."""
    from yocto_fn.generate import chat

    real_load = chat.load_model
    calls = []

    def scripted_load(opts):
        loaded = real_load(opts)
        tok = loaded.tok
        end = [tok.eos_id] if stop == "<eos>" else tok.encode(stop)
        script = [*tok.encode("ok"), *end, *tok.encode(" and more")]

        def forward(params, idx, cfg, **kwargs):
            logits, cache = loaded.model.forward(params, idx, cfg, **kwargs)
            forced = torch.full_like(logits[:, -1], -1e9)
            forced[:, script[len(calls)]] = 1e9
            calls.append(idx.shape[1])
            return torch.cat([logits[:, :-1], forced[:, None]], dim=1), cache

        return loaded._replace(model=loaded.model._replace(forward=forward))

    monkeypatch.setattr(chat, "load_model", scripted_load)
    histories = []
    monkeypatch.setattr(chat.Conversation, "add", lambda self, user, reply: histories.append(reply))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    argv = [
        "chat",
        "--ckpt",
        str(checkpoints[mode]),
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
    ]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == "Assistant: ok\n"
    assert histories == ["ok"]
    tok = real_load(ChatConfig(ckpt=checkpoints[mode])).tok
    chosen = len(tok.encode("ok")) + (1 if stop == "<eos>" else len(tok.encode(stop)))
    assert len(calls) == chosen  # the prefill, then one step per token up to the end


def test_sample_quantize_flag_decodes_with_the_quantised_weights(checkpoints, capsys, monkeypatch):
    """--quantize reaches the weights generate sees: int8 leaves, or a bf16 tree."""
    import yocto_fn.generate.sample as sample_mod

    seen = {}
    real = sample_mod.generate

    def spy(model, p, *args, **kwargs):
        seen["qkv"] = p["blocks"][0]["attn"]["qkv_w"].dtype
        seen["wte"] = p["wte"].dtype
        return real(model, p, *args, **kwargs)

    monkeypatch.setattr(sample_mod, "generate", spy)
    for mode, qkv, wte in (("none", torch.float32, torch.float32),
                           ("int8", torch.int8, torch.float32),
                           ("bf16", torch.bfloat16, torch.bfloat16)):  # fmt: skip
        argv = ["sample", "--ckpt", str(checkpoints["char"]), "--prompt", "The",
                "--temperature", "0", "--max-new-tokens", "8", "--quantize", mode]  # fmt: skip
        assert cli.main(argv) == 0
        assert capsys.readouterr().out.startswith("The")
        assert (seen["qkv"], seen["wte"]) == (qkv, wte)


def test_sampling_flags_reach_generate(checkpoints):
    """--top-k/--top-p 0 mean off (None); other values, the temperature and the seed pass
    through as given; the step is eager unless --compile."""
    from yocto_fn.config import SampleConfig
    from yocto_fn.generate.loading import sampling_kwargs

    loaded = load_model(SampleConfig(ckpt=checkpoints["char"]))
    on = sampling_kwargs(SampleConfig(ckpt=checkpoints["char"], top_k=5, top_p=0.9,
                                      temperature=0.7, seed=11), loaded)  # fmt: skip
    assert (on["top_k"], on["top_p"], on["temperature"], on["step"]) == (5, 0.9, 0.7, None)
    assert on["generator"].initial_seed() == 11
    off = sampling_kwargs(SampleConfig(ckpt=checkpoints["char"]), loaded)
    assert (off["top_k"], off["top_p"], off["temperature"]) == (None, None, 1.0)


def test_sample_next_draws_from_the_tempered_filtered_softmax(monkeypatch):
    """Logits are divided by the temperature, then top-p keeps the smallest set reaching p;
    the draw is from the softmax of what is left, one token per row."""
    from yocto_fn.generate.sample import sample_next

    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5], [3.0, 0.5, 1.0, 2.0]])
    seen: list[torch.Tensor] = []
    real = torch.multinomial

    def multinomial(p, n, generator=None):
        seen.append(p)
        return real(p, n, generator=generator)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    sample_next(logits, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen.pop(), logits.softmax(-1))  # temperature 1 by default
    out = sample_next(
        logits, temperature=0.5, top_p=0.95, generator=torch.Generator().manual_seed(0)
    )
    # softmax([6, 4, 2, 1]) = 0.862, 0.117, ...: the two largest reach 0.95
    top2 = torch.softmax(torch.tensor([6.0, 4.0]), dim=0)
    want = torch.tensor([[0.0, top2[1], top2[0], 0.0], [top2[0], 0.0, 0.0, top2[1]]])
    torch.testing.assert_close(seen[0], want)
    assert out.shape == (2,) and all(want[i, t] > 0 for i, t in enumerate(out.tolist()))
    assert sample_next(logits, temperature=0.0).tolist() == [2, 0]
    assert torch.equal(filter_logits(logits, None, 0.0), logits)  # top-p 0 means off


def test_a_terminal_sees_the_header_and_each_evaluation(checkpoints, tmp_path, monkeypatch, capsys):
    """At a terminal the run prints its header, a progress bar and each evaluation's line."""
    data = checkpoints["char"].parents[1] / "char"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    argv = ["train", "--data-dir", str(data), "--ckpt-dir", str(tmp_path), "--n-layer", "1",
            "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "2",
            "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu",
            "--model", "gpt-fast", "--amp", "off"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt-fast: ") and "parameters on cpu (fp32), steps 0->2" in out
    assert "step 2: train " in out


def test_unescape_turns_typed_escapes_into_characters():
    r"""`\n` and `\t` become a newline and a tab, `\\` one backslash; others stay."""
    from yocto_fn.generate.loading import unescape

    assert unescape(r"a\nb\tc\\n\x") == "a\nb\tc\\n\\x"


def test_an_empty_prompt_starts_from_a_newline_or_bos():
    """Char mode: a newline if the vocabulary has one, else its first character. Token mode:
    <bos> before the prompt where the tokenizer has one, nothing where it has none."""
    from types import SimpleNamespace

    from yocto_fn.formats.tokenizer import CharTokenizer
    from yocto_fn.generate.loading import encode_prompt

    def prompt(tok, text=""):
        return encode_prompt(SimpleNamespace(tok=tok), text, drop_unknown=False)

    assert prompt(CharTokenizer(["a", "\n", "b"])) == [1]
    assert prompt(CharTokenizer(["x", "y"])) == [0]
    assert prompt(CharTokenizer(["x", "y"]), "yx") == [1, 0]

    class Words:
        def __init__(self, bos_id):
            self.bos_id = bos_id

        def encode(self, text):
            return [len(w) for w in text.split()]

    assert prompt(Words(bos_id=7), "ab c") == [7, 2, 1]
    assert prompt(Words(bos_id=None), "ab c") == [2, 1]
    assert prompt(Words(bos_id=0), "") == [0]


def test_compile_builds_the_devices_backend_beside_the_checkpoint(
    checkpoints, tmp_path, monkeypatch
):
    """--compile asks for `compile_backend`'s step for the weights' device, packaged ones
    kept in `compiled/` beside the checkpoint (inside it when it is a directory, as export
    writes); without the flag the step is None, `generate`'s eager one. The builder is a
    recorder here: the compiled tests build real steps."""
    from yocto_fn.generate import loading
    from yocto_fn.generate.loading import compiled_step
    from yocto_fn.options import InferenceOptions

    calls = []
    monkeypatch.setattr(
        loading, "build_decode_step", lambda *a, **k: calls.append((a, k)) or "step"
    )
    ckpt = checkpoints["char"]
    loaded = load_model(InferenceOptions(ckpt=ckpt, device="cpu"))
    assert compiled_step(loaded, InferenceOptions(ckpt=ckpt)) is None and calls == []
    model, params, cfg = loaded.model, loaded.params, loaded.cfg
    assert compiled_step(loaded, InferenceOptions(ckpt=ckpt, compile=True)) == "step"
    assert calls.pop() == (
        (model, params, cfg, "packaged"),
        {"cache_dir": ckpt.parent / "compiled"},
    )
    on_meta = loaded._replace(params=params_to(params, "meta"))
    compiled_step(on_meta, InferenceOptions(ckpt=tmp_path, compile=True))
    assert calls.pop() == (
        (model, on_meta.params, cfg, "compiled"),
        {"cache_dir": tmp_path / "compiled"},
    )


def test_sampling_flags_accept_their_bounds_and_refuse_past_them():
    from yocto_fn.errors import UserError
    from yocto_fn.options import InferenceOptions

    opts = InferenceOptions(ckpt=Path("x"), max_new_tokens=1, temperature=0, top_k=0, top_p=1)
    assert (opts.max_new_tokens, opts.top_p) == (1, 1)
    InferenceOptions(ckpt=Path("x"), top_p=0)
    refused = {"max_new_tokens": 0, "temperature": -0.5, "top_k": -1, "top_p": 1.01}
    for name, value in refused.items():
        with pytest.raises(UserError) as err:
            InferenceOptions(ckpt=Path("x"), **{name: value})
        assert str(err.value).startswith(f"--{name.replace('_', '-')} must be ")


def test_overrides_and_mode_are_checked_against_the_model(checkpoints, tmp_path):
    """A checkpoint without a stored mode takes it from its tokenizer; --mode must agree;
    --vocab-path overrides a char model's vocabulary and --tokenizer-path a token model's,
    each only its own kind, and must have the model's size."""
    from yocto_fn.errors import UserError
    from yocto_fn.formats import checkpoint
    from yocto_fn.formats import tokenizer as tokenizers
    from yocto_fn.options import InferenceOptions

    root = checkpoints["char"].parents[1]
    vocab, bpe = root / "char" / "vocab.json", root / "tok" / "tokenizer.json"
    paths = {}
    for mode, other in (("char", "token"), ("token", "char")):
        ckpt = checkpoint.load(checkpoints[mode])
        ckpt.pop("mode", None)
        paths[mode] = tmp_path / f"{mode}.pt"
        checkpoint.save(paths[mode], ckpt)
        with pytest.raises(UserError) as err:
            load_model(InferenceOptions(ckpt=paths[mode], mode=other))
        assert str(err.value) == f"--mode {other} but {paths[mode]} is a {mode}-level model"
        assert load_model(InferenceOptions(ckpt=paths[mode], mode=mode)).cfg.vocab_size > 0

    def refusal(**kw) -> str:
        with pytest.raises(UserError) as err:
            load_model(InferenceOptions(**kw))
        return str(err.value)

    n_chars, n_bpe = (tokenizers.load(path).vocab_size for path in (vocab, bpe))
    assert n_chars != n_bpe
    advice = "use the vocabulary it was trained with (or leave the override out)"
    assert refusal(ckpt=paths["char"], vocab_path=bpe) == (
        f"{bpe} has {n_bpe} tokens but the model has {n_chars}; {advice}"
    )
    assert refusal(ckpt=paths["token"], tokenizer_path=vocab) == (
        f"{vocab} has {n_chars} tokens but the model has {n_bpe}; {advice}"
    )
    char = load_model(InferenceOptions(ckpt=paths["char"], vocab_path=vocab, tokenizer_path=bpe))
    token = load_model(InferenceOptions(ckpt=paths["token"], vocab_path=vocab, tokenizer_path=bpe))
    assert (char.tok.vocab_size, token.tok.vocab_size) == (n_chars, n_bpe)


def test_sample_run_reports_build_time_and_passes_eos(checkpoints, monkeypatch, capsys):
    """With --compile --stats the first sample's line holds load and compile times (on a
    fake clock, 0.25 s per reading), later samples neither; the tokenizer's end token reaches
    `generate`; --num-samples 0 is refused word for word."""
    from yocto_fn.config import SampleConfig
    from yocto_fn.errors import UserError
    from yocto_fn.generate import aot, sample

    monkeypatch.setattr(
        aot, "load_or_build", lambda m, p, cfg, *a: steps.build_decode_step(m, p, cfg)
    )
    clock = iter(range(1000))
    monkeypatch.setattr(sample.time, "perf_counter", lambda: next(clock) * 0.25)
    seen = []
    real_generate = sample.generate
    monkeypatch.setattr(
        sample, "generate", lambda *a, **k: seen.append(k["eos_id"]) or real_generate(*a, **k)
    )
    opts = SampleConfig(ckpt=checkpoints["token"], compile=True, stats=True, num_samples=2,
                        max_new_tokens=3, temperature=0, prompt="the")  # fmt: skip
    sample.run(opts)
    lines = capsys.readouterr().err.splitlines()
    tok = load_model(opts).tok
    assert tok.eos_id is not None and seen == [tok.eos_id, tok.eos_id]
    prompt_tokens = len(tok.encode("the")) + 1  # and <bos>
    steady = "first decode step 250.0 ms, decode 4.0 tokens/s"
    body = f"prompt tokens {prompt_tokens}, new tokens 3, prefill 250.0 ms, {steady}"
    assert lines == [f"load 0.25 s, compile 0.25 s, {body}, wall 1.25 s", f"{body}, wall 0.75 s"]
    sample.run(dataclasses.replace(opts, compile=False, num_samples=1))
    assert capsys.readouterr().err.startswith("load 0.25 s, prompt tokens ")
    with pytest.raises(UserError) as err:
        SampleConfig(ckpt=checkpoints["token"], num_samples=0)
    assert str(err.value) == "--num-samples must be at least 1 (got 0)"
