"""The real default model (SmolLM2-135M-Instruct GGUF) on a real MovieLens-100k request."""

import math
import os

import pytest

from benchmarks.bench_ranking import ML100K, ml100k_request
from ranking.modes.incremental import build_sequence


@pytest.mark.slow
@pytest.mark.skipif(
    not ML100K.exists() and os.environ.get("CI") != "true",
    reason="MovieLens-100k not at ../shared/data (under CI=true the test fails instead)",
)
def test_default_model_ranks_a_real_ml100k_request(default_ranker):
    req, target = ml100k_request()
    assert len(req.history) == 20 and len(req.candidates) == 20
    backend = default_ranker.backend
    backend.clear_cache()
    before = backend.tokens_computed
    res = default_ranker.rank(req)
    assert sorted(res.order) == sorted(req.ids)
    assert target in res.order
    assert len(res.steps) == 19 and res.fallback is False
    assert all(0 < s.prob <= 1 for s in res.steps)
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
    # one prefill plus one token per further step
    assert backend.tokens_computed - before == len(build_sequence(req, backend).prompt_ids) + 18
    assert res.model.startswith("SmolLM2-135M-Instruct")
    # the real model's step distribution is far from uniform over 20 labels
    assert max(s.prob for s in res.steps) > 1.5 / 20


@pytest.mark.slow
@pytest.mark.skipif(
    not ML100K.exists() and os.environ.get("CI") != "true",
    reason="MovieLens-100k not at ../shared/data (under CI=true the test fails instead)",
)
def test_default_model_fast_step_ranks_like_the_transformers_forward(default_ranker):
    """SmolLM2 is a Llama from a Q4_1 GGUF file: its one-token steps go through
    ranking.backends.llama_step reading the 4-bit blocks, which must give the transformers
    forward's ranking and step probabilities."""
    req, _ = ml100k_request(user="2")
    backend = default_ranker.backend
    backend.clear_cache()
    fast = default_ranker.rank(req)
    assert backend._llama_step is not None and backend._llama_step.weights == "q4"
    backend.fast_decode = False
    try:
        backend.clear_cache()
        plain = default_ranker.rank(req)
    finally:
        backend.fast_decode = True
    assert fast.order == plain.order
    for a, b in zip(fast.steps, plain.steps, strict=True):
        assert a.prob == pytest.approx(b.prob, rel=1e-3)
    assert fast.log_propensity == pytest.approx(plain.log_propensity, abs=1e-3)


@pytest.mark.slow
def test_the_converted_default_model_is_the_gguf_model(default_ranker, tmp_path) -> None:
    """Loading the GGUF through its cached Hugging Face conversion (the transformers
    backend's default, ranking.loading._from_conversion) gives the same weights bit for bit,
    the same tokens and the same ranking, under the GGUF's model id."""
    import torch

    from ranking.engine import Ranker
    from ranking.loading import load_backend
    from tests.fixtures.requests import make_request

    converted = load_backend("default", device="cpu", cache=False, converted_dir=tmp_path)
    gguf = default_ranker.backend
    assert [p.name for p in tmp_path.iterdir()] == ["SmolLM2-135M-Instruct.Q4_1-hf"]
    assert converted.model_id == gguf.model_id
    want = dict(gguf.model.named_parameters())
    for name, param in converted.model.named_parameters():
        assert torch.equal(param, want[name]), name
    text = gguf.chat_prompt("Rank these: <|a|> Toy Story (1995), Heat (1995) ü")
    assert converted.chat_prompt("Rank these: <|a|> Toy Story (1995), Heat (1995) ü") == text
    assert converted.encode(text) == gguf.encode(text)
    req = make_request(8)
    a, b = Ranker(converted, batch_size=1).rank(req), default_ranker.rank(req)
    assert a.order == b.order and a.log_propensity == pytest.approx(b.log_propensity, abs=1e-5)
