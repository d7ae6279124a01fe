"""recsys.runtime is the one place settings become a ranker: every entry point honours
every ranking setting (a table over entry points x settings), explicit overrides win, and
vLLM's engine options come from the settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from ranking.backends.fake import ScriptedBackend
from recsys import runtime
from recsys.settings import Settings, get_settings

# a value for every ranking setting that differs from its default
SETTINGS = {
    "RECSYS_DEVICE": "cpu",
    "RECSYS_BACKEND": "transformers",
    "RECSYS_DTYPE": "float32",
    "RECSYS_BATCH_SIZE": "3",
    "RECSYS_REASON_MAX_NEW_TOKENS": "77",
    "RECSYS_FUSION_ALPHA": "0.25",
    "RECSYS_TORCH_THREADS": "1",
}
EXPECTED_LOAD = {"device": "cpu", "backend": "transformers", "dtype": "float32", "threads": 1}
EXPECTED_RANKER = {"batch_size": 3, "reason_max_new_tokens": 77, "fusion_alpha": 0.25}


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """The settings above in the environment; every backend load and Ranker recorded."""
    import ranking.engine
    import ranking.loading

    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"sqlite:///{tmp_path / 'recsys.db'}")
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    loads, rankers = [], []

    def fake_load(model, **kwargs):
        loads.append({"model": str(model), **kwargs})
        return ScriptedBackend()

    class RecordingRanker(ranking.engine.Ranker):
        def __init__(self, backend, **kwargs):
            super().__init__(backend, **kwargs)
            rankers.append(self.options)

    monkeypatch.setattr(ranking.loading, "load_backend", fake_load)
    monkeypatch.setattr(ranking.engine, "Ranker", RecordingRanker)
    yield loads, rankers
    get_settings.cache_clear()


def _api(tmp_path):
    from fastapi.testclient import TestClient

    from recsys.api import create_app

    with TestClient(create_app(settings=get_settings())) as client:
        assert client.get("/readyz").status_code == 200


def _batch(tmp_path):
    from recsys.batch import BatchConfig, _ranker

    _ranker(BatchConfig(), runtime.database_engine())


def _batch_task(tmp_path):
    """The Celery batch task builds the same BatchConfig the CLI does: no ranking option."""
    import recsys.batch
    from jobs import tasks

    seen = []
    real = recsys.batch.run_batch
    recsys.batch.run_batch = lambda config, **kw: seen.append(config) or _Report()
    try:
        tasks.batch_recommendations.apply(kwargs={"k": 5}).get()
    finally:
        recsys.batch.run_batch = real
    recsys.batch._ranker(seen[0], runtime.database_engine())


@dataclass
class _Report:
    """Stands for run_batch's report (the task returns asdict of it)."""

    users_written: int = 0


def _demo(tmp_path):
    from recsys.pipeline import DemoConfig, _load_ranker

    _load_ranker(DemoConfig(data=tmp_path), runtime.database_engine())


def _replay(tmp_path):
    from recsys.replay.replay import rank_function

    rank_function("default", [])


def _rank_task(tmp_path):
    from jobs import tasks

    request = {"task": "rec-movie", "history": ["a"], "candidates": [
        {"id": "x", "text": "x"}, {"id": "y", "text": "y"}]}  # fmt: skip
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(request) + "\n")
    tasks.rank_requests.apply(kwargs={"in_path": str(src), "out_path": str(out)}).get()
    assert out.read_text().count("\n") == 1


def _eval(tmp_path):
    from recsys.eval.harness import make_ranker

    make_ranker("incremental", model="default", fusion_alpha=0.25)


def _rank_cli(tmp_path):
    from typer.testing import CliRunner

    from recsys.cli import app

    request = {"task": "rec-movie", "history": ["a"], "candidates": [
        {"id": "x", "text": "x"}, {"id": "y", "text": "y"}]}  # fmt: skip
    result = CliRunner().invoke(app, ["rank", "-r", "-"], input=json.dumps(request))
    assert result.exit_code == 0, result.output


ENTRY_POINTS = {
    "api": _api,
    "batch": _batch,
    "celery batch task": _batch_task,
    "demo": _demo,
    "replay": _replay,
    "celery rank task": _rank_task,
    "eval": _eval,
    "rank cli": _rank_cli,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_honours_every_ranking_setting(recorded, tmp_path, entry):
    loads, rankers = recorded
    ENTRY_POINTS[entry](tmp_path)
    assert loads, f"{entry} loaded no backend through recsys.runtime"
    got = {k: loads[-1].get(k) for k in EXPECTED_LOAD}
    assert got == EXPECTED_LOAD
    options = rankers[-1]
    assert {k: getattr(options, k) for k in EXPECTED_RANKER} == EXPECTED_RANKER


def test_explicit_overrides_win_and_none_means_the_setting():
    s = Settings(device="cpu", batch_size=4)
    config = runtime.RankerConfig.from_settings(s, device="cuda", batch_size=None)
    assert (config.device, config.batch_size) == ("cuda", 4)
    with pytest.raises(TypeError, match="unknown ranker options"):
        runtime.RankerConfig.from_settings(s, devise="cpu")


def test_vllm_engine_options_come_from_the_settings(monkeypatch, tmp_path):
    import inspect

    from ranking.backends.vllm_backend import VLLMBackend

    for name, value in {"TENSOR_PARALLEL_SIZE": "4", "MAX_MODEL_LEN": "2048",
                        "GPU_MEMORY_UTILIZATION": "0.5", "BLOCK_SIZE": "64"}.items():  # fmt: skip
        monkeypatch.setenv(f"RECSYS_VLLM_{name}", value)
    options = runtime.vllm_engine_options(Settings(var_dir=tmp_path))
    assert options == {"tensor_parallel_size": 4, "max_model_len": 2048,
                       "gpu_memory_utilization": 0.5, "block_size": 64,
                       "cache_root": Path(tmp_path) / "models"}  # fmt: skip
    params = inspect.signature(VLLMBackend).parameters
    assert set(options) <= set(params)  # every option is one VLLMBackend takes
    defaults = Settings.model_fields
    for name in ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization"):
        assert params[name].default == defaults[f"vllm_{name}"].default


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSYS_VLLM_TENSOR_PARALLEL_SIZE", "two", "vllm_tensor_parallel_size"),
        ("RECSYS_VLLM_GPU_MEMORY_UTILIZATION", "most", "vllm_gpu_memory_utilization"),
        ("RECSYS_TORCH_THREADS", "0", "torch_threads"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch, variable, value, message):
    from pydantic import ValidationError

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_vllm_environment_is_set_once_and_an_explicit_one_wins(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)  # restored after the test
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    runtime.prepare_vllm_environment(Settings(vllm_cpu_kvcache_gib=3))
    import os

    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
