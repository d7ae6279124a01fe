"""Text embeddings: batching, caching by text hash (memory and disk), the real MiniLM model."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.embeddings import HashingEncoder, TextEmbedder, default_model_dir
from retrieval.errors import RetrievalError


class CountingEncoder(HashingEncoder):
    def __init__(self):
        super().__init__(dim=32)
        self.batches = []

    def encode(self, texts):
        self.batches.append(list(texts))
        return super().encode(texts)


def test_batches_and_cache_by_text(tmp_path):
    enc = CountingEncoder()
    emb = TextEmbedder(enc, batch_size=2, cache_dir=tmp_path)
    texts = ["space opera", "romantic comedy", "space western", "space opera"]
    first = emb.embed(texts)
    assert first.shape == (4, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first[0], first[3])
    assert enc.batches == [["space opera", "romantic comedy"], ["space western"]]
    # a second call encodes only the new text
    emb.embed(["space opera", "film noir"])
    assert enc.batches[-1] == ["film noir"] and emb.encoded_texts == 4
    # a fresh embedder reads the disk cache and encodes nothing
    enc2 = CountingEncoder()
    again = TextEmbedder(enc2, cache_dir=tmp_path).embed(texts)
    assert enc2.batches == []
    np.testing.assert_array_equal(again, first)


def test_empty_input_gives_empty_matrix():
    assert TextEmbedder(HashingEncoder(16)).embed([]).shape == (0, 16)


def test_wrong_encoder_output_is_a_clear_error():
    class Broken(HashingEncoder):
        def encode(self, texts):
            return np.ones((len(texts), 3))

    with pytest.raises(RetrievalError, match=r"returned shape \(1, 3\), expected \(1, 16\)"):
        TextEmbedder(Broken(16)).embed(["x"])


def test_not_a_model_directory_is_a_clear_error(tmp_path):
    from retrieval.embeddings import SentenceTransformerEncoder

    with pytest.raises(RetrievalError, match="not a sentence-transformers model directory"):
        SentenceTransformerEncoder(tmp_path)


@pytest.mark.slow
def test_real_minilm_offline_puts_similar_titles_closer():
    assert (default_model_dir() / "modules.json").exists()
    emb = TextEmbedder()
    v = emb.embed(["Star Wars (1977)", "Return of the Jedi (1983)", "Sense and Sensibility"])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]
