"""Interop: safetensors and Hugging Face export/import, checked against transformers itself.

Random weights have their norms and biases moved off 1 and 0, so that a mapping that
drops, swaps or mis-transposes any tensor changes the logits.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import real_text, tiny_config
from safetensors.torch import load_file, save_file

from yocto_fn import cli, models
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.params import named_leaves, tree_map
from yocto_fn.formats import checkpoint, interop
from yocto_fn.formats import tokenizer as tokenizers
from yocto_fn.generate.sample import generate

CHARS = [chr(c) for c in range(32, 96)]  # 64 characters
SHAPE = dict(vocab_size=64, block_size=32)  # conftest.tiny_config otherwise


def random_params(arch: str, cfg: ModelConfig, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    init = models.get(arch).init(cfg, seed)
    return tree_map(lambda t: t + 0.1 * torch.randn(t.shape, generator=gen), init)


def save_ckpt(path: Path, arch: str, cfg: ModelConfig, params, tok) -> Path:
    mode = "char" if isinstance(tok, tokenizers.CharTokenizer) else "token"
    checkpoint.save(path, {"format": checkpoint.FORMAT, "arch": arch, "mode": mode,
                           "model_config": cfg.to_dict(), "params": params, "iter": 0,
                           "tokenizer": tok.to_dict()})  # fmt: skip
    return path


def perturb_(hf_model, seed: int = 0) -> None:
    """Move every transformers parameter (a tied one once) off its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def ours_greedy(arch, params, cfg, prompt: torch.Tensor, n: int = 20) -> list[int]:
    return generate(models.get(arch), params, cfg, prompt, max_new_tokens=n, temperature=0)[
        0
    ].tolist()


def hf_greedy(hf_model, prompt: torch.Tensor, n: int = 20) -> list[int]:
    out = hf_model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prompt.shape[1] :].tolist()


def bpe_tokenizer(vocab_size: int = 300) -> tokenizers.HFTokenizer:
    return tokenizers.train_bpe(real_text()[:20_000].split("\n\n"), vocab_size)


# ------------------------------------------------------------------------------ export


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [("gpt", {}), ("gpt", {"tie_weights": True, "gelu": "tanh"}),
     ("gpt-fast", {"tie_weights": True}), ("gpt-plus", {}),
     ("gpt-plus", {"tie_weights": True, "rope_theta": 500.0})],
)  # fmt: skip
def test_hf_export_loads_in_transformers_with_equal_logits_and_greedy_text(
    tmp_path, arch, overrides
):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(**SHAPE | overrides)
    params = random_params(arch, cfg)
    ckpt = save_ckpt(tmp_path / "m.pt", arch, cfg, params, tokenizers.CharTokenizer(CHARS))
    out = tmp_path / "hf"
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "hf"]) == 0
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every tensor given (zero biases too), none unused
    hf.eval()
    expected = "LlamaForCausalLM" if arch == "gpt-plus" else "GPT2LMHeadModel"
    assert type(hf).__name__ == expected
    stored = load_file(out / "model.safetensors")
    assert ("lm_head.weight" in stored) is not cfg.tie_weights  # a tied head is stored once

    idx = torch.randint(64, (2, 32), generator=torch.Generator().manual_seed(1))
    ours, _ = models.get(arch).forward(params, idx, cfg)
    with torch.no_grad():
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    prompt = idx[:1, :8]
    assert ours_greedy(arch, params, cfg, prompt) == hf_greedy(hf, prompt)


@pytest.mark.parametrize("backend", ["bpe", "word"])
def test_token_mode_export_writes_a_tokenizer_autotokenizer_loads(tmp_path, backend):
    transformers = pytest.importorskip("transformers")
    texts = real_text()[:20_000].split("\n\n")
    tok = (
        tokenizers.train_bpe(texts, 300) if backend == "bpe" else tokenizers.train_word(texts, 300)
    )
    cfg = tiny_config(**SHAPE | {"vocab_size": tok.vocab_size})
    ckpt = save_ckpt(tmp_path / "m.pt", "gpt-plus", cfg, random_params("gpt-plus", cfg), tok)
    out = tmp_path / "hf"
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "hf"]) == 0
    auto = transformers.AutoTokenizer.from_pretrained(out)
    paragraph = real_text()[30_000:31_500]
    assert auto(paragraph)["input_ids"] == tok.encode(paragraph)
    assert auto.bos_token == "<bos>" and auto.eos_token_id == tok.eos_id
    config = transformers.AutoConfig.from_pretrained(out)
    assert (config.bos_token_id, config.eos_token_id) == (tok.bos_id, tok.eos_id)


def test_char_mode_hf_export_says_autotokenizer_does_not_apply(tmp_path, capsys):
    cfg = tiny_config(**SHAPE)
    ckpt = save_ckpt(tmp_path / "m.pt", "gpt", cfg, random_params("gpt", cfg),
                     tokenizers.CharTokenizer(CHARS))  # fmt: skip
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"),
                     "--format", "hf"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "AutoTokenizer does not apply" in err
    assert tokenizers.load(tmp_path / "hf" / "vocab.json").chars == CHARS


# ------------------------------------------------------------------------------ import


@pytest.mark.parametrize("saved", ["save_pretrained", "hub_names"])
def test_gpt2_from_transformers_imports_with_equal_logits_and_samples(tmp_path, saved, capsys):
    transformers = pytest.importorskip("transformers")
    tok = bpe_tokenizer()
    eos = tok.eos_id  # like GPT-2's <|endoftext|>: start and end are one token
    config = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=48,
        activation_function="gelu_new", bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    perturb_(hf)
    src = tmp_path / "gpt2"
    if saved == "save_pretrained":
        hf.save_pretrained(src)
    else:  # the original GPT-2 files: GPT2Model's names, no lm_head (tied)
        src.mkdir()
        config.save_pretrained(src)
        state = {k: v.contiguous() for k, v in hf.transformer.state_dict().items()}
        save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    tok.save(src / "tokenizer.json")
    out = tmp_path / "gpt2.pt"
    assert cli.main(["import", "--hf-dir", str(src), "--out", str(out)]) == 0

    ckpt = checkpoint.load(out)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    assert ckpt["arch"] == "gpt" and ckpt["mode"] == "token"
    assert (cfg.gelu, cfg.mlp_hidden, cfg.tie_weights) == ("tanh", 48, True)
    idx = torch.randint(tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    ours, _ = models.get("gpt").forward(ckpt["params"], idx, cfg)
    with torch.no_grad():
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert ours_greedy("gpt", ckpt["params"], cfg, idx[:1, :8]) == hf_greedy(hf, idx[:1, :8])

    loaded = tokenizers.from_dict(ckpt["tokenizer"])
    assert loaded.bos_id == loaded.eos_id == eos
    capsys.readouterr()
    argv = ["sample", "--ckpt", str(out), "--prompt", "The", "--max-new-tokens", "6",
            "--temperature", "0", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("The")


def test_llama_with_grouped_query_attention_imports_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=len(CHARS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    perturb_(hf)
    with torch.no_grad():  # activations small enough for RMSNorm's eps to matter
        hf.model.embed_tokens.weight.mul_(1e-3)
    src = tmp_path / "llama"
    src.mkdir()
    config.save_pretrained(src)
    torch.save(hf.state_dict(), src / "pytorch_model.bin")  # the older format, weights_only
    (src / "vocab.json").write_bytes(interop.fileio.json_bytes(CHARS))
    out = tmp_path / "llama.pt"
    assert cli.main(["import", "--hf_dir", str(src), "--out", str(out)]) == 0

    ckpt = checkpoint.load(out)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    assert ckpt["arch"] == "gpt-plus" and ckpt["mode"] == "char"
    assert (cfg.n_head, cfg.mlp_hidden, cfg.norm_eps, cfg.rope_theta) == (4, 48, 1e-5, 500.0)
    idx = torch.randint(len(CHARS), (2, 32), generator=torch.Generator().manual_seed(1))
    ours, _ = models.get("gpt-plus").forward(ckpt["params"], idx, cfg)
    with torch.no_grad():
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert ours_greedy("gpt-plus", ckpt["params"], cfg, idx[:1, :8]) == hf_greedy(hf, idx[:1, :8])


# ------------------------------------------------------------------------- safetensors


TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
         "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "2", "--max-iters", "2",
         "--amp", "off", "--device", "cpu"]  # fmt: skip


def test_safetensors_round_trip_is_bit_exact_samples_and_warm_starts(char_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--data-dir", str(char_dir), "--model", "gpt-plus", *TRAIN]
    assert cli.main([*train, "--ckpt-dir", str(run), "--tie-weights"]) == 0
    out = tmp_path / "st"
    argv = ["export", "--ckpt", str(run / "best.pt"), "--out", str(out), "--format", "safetensors"]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    stored = load_file(out / "model.safetensors")
    assert "lm_head" not in stored and "wte" in stored  # tied: the embedding, once

    original, loaded = checkpoint.load(run / "best.pt"), checkpoint.load(out)
    a, b = named_leaves(original["params"]), named_leaves(loaded["params"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded["model_config"] == original["model_config"]
    assert loaded["tokenizer"] == original["tokenizer"]

    capsys.readouterr()
    texts = []
    for ckpt in (run / "best.pt", out):
        argv = ["sample", "--ckpt", str(ckpt), "--prompt", "The", "--max-new-tokens", "12",
                "--device", "cpu"]  # fmt: skip
        assert cli.main(argv) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]
    assert cli.main([*train, "--ckpt-dir", str(tmp_path / "warm"), "--tie-weights",
                     "--init-from", str(out)]) == 0  # fmt: skip
    assert "init-from" in capsys.readouterr().err


def test_checkpoint_reads_an_exported_directory_without_importing_interop(tmp_path):
    """The two modules import in one direction (interop -> checkpoint): `checkpoint.load` of
    an exported directory, in a fresh interpreter, leaves interop unimported."""
    cfg = tiny_config(**SHAPE)
    ckpt = save_ckpt(tmp_path / "m.pt", "gpt", cfg, random_params("gpt", cfg),
                     tokenizers.CharTokenizer(CHARS))  # fmt: skip
    out = tmp_path / "st"
    argv = ["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "safetensors"]
    assert cli.main(argv) == 0
    code = (
        "import sys; from yocto_fn.formats import checkpoint; "
        f"print(checkpoint.load(r'{out}')['arch'], 'yocto_fn.formats.interop' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["gpt", "False"]


def test_imported_gpt2_warm_starts_a_run(char_dir, tmp_path, capsys):
    """An import is a checkpoint like a trained one: --init-from across vocabularies loads
    every block and leaves out the embedding and head (--no-strict-init)."""
    cfg = tiny_config(**SHAPE | {"n_layer": 1, "tie_weights": True})
    ckpt = save_ckpt(tmp_path / "m.pt", "gpt", cfg, random_params("gpt", cfg),
                     tokenizers.CharTokenizer(CHARS))  # fmt: skip
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"),
                     "--format", "hf"]) == 0  # fmt: skip
    imported = tmp_path / "imported.pt"
    assert cli.main(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(imported)]) == 0
    argv = [
        "train",
        "--data-dir",
        str(char_dir),
        "--model",
        "gpt",
        "--tie-weights",
        *TRAIN,
        "--ckpt-dir",
        str(tmp_path / "warm"),
        "--init-from",
        str(imported),
        "--no-strict-init",
    ]
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "loaded 15 tensors" in err and "wte (other vocabulary)" in err


# ------------------------------------------------------------------------------ errors


def _hf_llama(tmp_path: Path, **overrides) -> Path:
    """A Llama directory written by hand: config.json, weights and a char vocabulary."""
    cfg = tiny_config(**SHAPE)
    params = random_params("gpt-plus", cfg)
    ckpt = save_ckpt(tmp_path / "m.pt", "gpt-plus", cfg, params, tokenizers.CharTokenizer(CHARS))
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"),
                     "--format", "hf"]) == 0  # fmt: skip
    config = interop.read_json(tmp_path / "hf" / "config.json") | overrides
    (tmp_path / "hf" / "config.json").write_bytes(interop.fileio.json_bytes(config))
    return tmp_path / "hf"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_a_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))


def import_argv(src: Path, tmp_path: Path) -> list[str]:
    return ["import", "--hf-dir", str(src), "--out", str(tmp_path / "out" / "m.pt")]


def bad_weights(tmp_path):
    src = _hf_llama(tmp_path)
    _truncate(src / "model.safetensors")
    return import_argv(src, tmp_path), "is not a readable safetensors file"


def attention_bias(tmp_path):
    return import_argv(_hf_llama(tmp_path, attention_bias=True), tmp_path), "attention_bias"


def scaled_rope(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    return import_argv(_hf_llama(tmp_path, rope_parameters=rope), tmp_path), "'llama3' RoPE"


def other_model_type(tmp_path):
    return import_argv(_hf_llama(tmp_path, model_type="mistral"), tmp_path), "'mistral'"


def gpt2_relu(tmp_path):
    src = _hf_llama(tmp_path, model_type="gpt2", activation_function="relu", n_embd=32,
                    n_layer=2, n_head=2, n_positions=32)  # fmt: skip
    return import_argv(src, tmp_path), "activation_function='relu'"


def no_tokenizer(tmp_path):
    src = _hf_llama(tmp_path)
    (src / "vocab.json").unlink()
    return import_argv(src, tmp_path), "has no tokenizer.json"


def missing_dir(tmp_path):
    return import_argv(tmp_path / "nowhere", tmp_path), "is not a directory"


def damaged_export(tmp_path):
    """A flipped bit in an exported safetensors file passes safetensors' own checks."""
    _hf_llama(tmp_path)
    st = tmp_path / "st"
    assert cli.main(["export", "--ckpt", str(tmp_path / "m.pt"), "--out", str(st),
                     "--format", "safetensors"]) == 0  # fmt: skip
    _flip_a_weight_byte(st / "model.safetensors")
    return ["export", "--ckpt", str(st), "--out", str(tmp_path / "out"), "--format", "hf"], (
        "fail their checksum"
    )


def unexpressible_tensor(tmp_path):
    _hf_llama(tmp_path)
    ckpt = checkpoint.load(tmp_path / "m.pt")
    ckpt["params"]["blocks"][0]["attn"]["gate_w"] = torch.zeros(4)
    checkpoint.save(tmp_path / "m.pt", ckpt)
    argv = ["export", "--ckpt", str(tmp_path / "m.pt"), "--out", str(tmp_path / "out"),
            "--format", "hf"]  # fmt: skip
    return argv, "blocks.0.attn.gate_w cannot be expressed in the Llama layout"


def sample_an_hf_dir(tmp_path):
    argv = ["sample", "--ckpt", str(_hf_llama(tmp_path)), "--device", "cpu"]
    return argv, "cli.py import --hf-dir"


@pytest.mark.parametrize(
    "case",
    [bad_weights, attention_bias, scaled_rope, other_model_type, gpt2_relu, no_tokenizer,
     missing_dir, damaged_export, unexpressible_tensor, sample_an_hf_dir],
)  # fmt: skip
def test_what_cannot_be_read_or_mapped_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    argv, says = case(tmp_path)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_resume_refuses_weights_only_checkpoints(char_dir, tmp_path, capsys):
    src = _hf_llama(tmp_path)
    assert cli.main(import_argv(src, tmp_path)) == 0
    st = tmp_path / "st"
    assert cli.main(["export", "--ckpt", str(tmp_path / "m.pt"), "--out", str(st),
                     "--format", "safetensors"]) == 0  # fmt: skip
    for weights_only in (st, tmp_path / "out" / "m.pt"):
        run = tmp_path / "run"
        capsys.readouterr()
        argv = ["train", "--data-dir", str(char_dir), "--resume", str(weights_only),
                "--ckpt-dir", str(run)]  # fmt: skip
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"start from it with --init-from {weights_only}" in err
        assert not (run / "latest.pt").exists()


def test_old_checkpoint_configs_load_with_the_exact_gelu():
    old = {k: v for k, v in ModelConfig().to_dict().items()
           if k not in ("gelu", "norm_eps", "mlp_hidden")}  # fmt: skip
    assert ModelConfig.from_dict(old) == ModelConfig()
    assert ModelConfig().gelu == "exact"
