"""Convert a model spec (a GGUF file, or any Hugging Face model directory) into a plain
Hugging Face model directory: config.json + safetensors weights + tokenizer with its chat
template.

vLLM serves Hugging Face directories, not the GGUF file the default model ships as, so the
vLLM backend converts the GGUF once (``ensure_hf_dir``) and loads the directory. The GGUF's
quantised weights are de-quantised (``GgufConfig(dequantize=True)``; without it transformers
refuses ``save_pretrained`` for a GGUF-quantised model).

The directory appears whole or not at all: the model is written into a temporary sibling
directory that is renamed into place at the end, so an interrupted conversion never leaves
a half-written model behind (and never touches an existing one unless asked to replace it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ranking.errors import ModelLoadError
from ranking.model_spec import resolve_model

DTYPES = ("float32", "bfloat16", "float16")
# written last: its presence says the directory is a finished conversion of `source`
MARKER = "recsys_converted_from.txt"


def convert_to_hf(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write the model named by `source` ('default', a .gguf file, a directory) to `out`.

    `dtype` is the dtype of the saved weights: float32 keeps the de-quantised weights exactly
    (what the transformers backend computes with on CPU); bfloat16 halves the size.
    Raises ModelLoadError when the source does not load or `out` exists (without
    `overwrite`)."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {list(DTYPES)}")
    spec = resolve_model(source)
    out_dir = Path(out).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelLoadError(
            f"output directory {str(out_dir)!r} exists and is not empty; choose another "
            "path or pass overwrite (--overwrite) to replace it"
        )
    where = spec.path / spec.gguf_file if spec.gguf_file else spec.path
    model, tokenizer = _load(spec.path, spec.gguf_file, dtype, where)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(f"{where}\n{_identity(where)}\n")
        # mkdtemp (and the safetensors writer) create owner-only files; a model is shared
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if overwrite and out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)  # atomic; fails if a non-empty out_dir appeared meanwhile
        except OSError as exc:
            raise ModelLoadError(
                f"could not move the converted model into {str(out_dir)!r} ({exc}); another "
                "process may have written it meanwhile"
            ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_hf_dir(
    source: str | os.PathLike[str], cache_root: str | os.PathLike[str], *, dtype: str = "float32"
) -> Path:
    """A Hugging Face directory for `source`: the directory itself when it already is one,
    else a conversion cached under `cache_root/<name>-hf` (made on first use)."""
    spec = resolve_model(source)
    if spec.gguf_file is None:
        return spec.path
    gguf = spec.path / spec.gguf_file
    target = Path(cache_root).expanduser() / f"{Path(spec.gguf_file).stem}-hf"
    if _converted_from(target, gguf):
        return target
    try:  # a stale conversion (another file of the same name since) is replaced
        return convert_to_hf(gguf, target, dtype=dtype, overwrite=(target / MARKER).exists())
    except ModelLoadError:
        # two processes starting at once both convert; the first to finish wins, and the
        # other uses its directory instead of replacing it under a running engine
        if _converted_from(target, gguf):
            return target
        raise


def _identity(path: Path) -> str:
    """What tells one file from another of the same name: its size and modification time."""
    stat = Path(path).stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _converted_from(target: Path, source: Path) -> bool:
    """Whether `target` is a finished conversion of `source` as it is now. A marker without
    the identity line (written before it existed) counts as the same file."""
    try:
        lines = (target / MARKER).read_text().splitlines()
    except OSError:
        return False
    return len(lines) < 2 or lines[1] == _identity(source)


def _load(path: Path, gguf_file: str | None, dtype: str, where: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs: dict = {}
    if gguf_file:
        kwargs = {
            "gguf_file": gguf_file,
            "quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True),
        }
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, **({"gguf_file": gguf_file} if gguf_file else {})
        )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {str(where)!r}: {exc}") from exc
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelLoadError(
            f"{str(where)!r} has no chat template; the rankers need the model's own template"
        )
    return model, tokenizer
