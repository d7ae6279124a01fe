"""`recsys train` / the closed loop on a hybrid ranker (recsys.hybrid_loop), on a tiny hybrid
folder and episodes from a JSONL file: no steps is the base itself, per user (a known
answer); steps train the folder's adapter and projector and the result serves, registered
as a plain run would be; a committee is refused with what to do instead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ranking.backends.committee import CommitteeSpec, write_committee
from ranking.hybrid import is_hybrid_dir
from ranking.rl.episodes import Episode, write_episodes
from ranking.types import Candidate, RankRequest
from recsys.errors import UserError
from recsys.hybrid_loop import served_rr
from recsys.training import TrainingOptions, run_training
from tests.test_hybrid import ITEMS, fresh_hybrid


@pytest.fixture
def folder(tiny_model_dir, tmp_path):
    """A tiny trained-looking hybrid folder served at weight 1 (its card)."""
    _, hybrid = fresh_hybrid(tiny_model_dir, seed=3)
    with torch.no_grad():
        hybrid.projector.out.weight.normal_(std=0.5)
    out = hybrid.save(tmp_path / "hybrid")
    (out / "card.json").write_text(json.dumps({"fusion_alpha": 1.0}))
    return out


@pytest.fixture
def episodes_file(tmp_path):
    """36 users, one episode each: 5 scored candidates from the folder's catalogue, the
    history by id, the truth among the candidates."""
    rng = np.random.default_rng(0)
    eps = []
    for u in range(36):
        items = [str(i) for i in rng.choice(ITEMS, size=8, replace=False)]
        cands = tuple(Candidate(i, f"Movie {i}", score=float(rng.normal())) for i in items[:5])
        request = RankRequest(task="rec-movie", candidates=cands,
                              history=tuple(f"Movie {i}" for i in items[5:]),
                              history_ids=tuple(items[5:]))  # fmt: skip
        eps.append(Episode(request=request, ground_truth=items[u % 5], user=f"u{u}"))
    path = tmp_path / "episodes.jsonl"
    write_episodes(path, eps)
    return path


def options(folder, episodes_file, **kw) -> TrainingOptions:
    base = dict(source=str(episodes_file), model=str(folder), fusion_alpha=1.0, steps=0,
                batch_size=2, lr=1e-3, val_fraction=0.3, register=False, device="cpu",
                run_name="tune")  # fmt: skip
    return TrainingOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_no_steps_serves_the_base_itself_per_user(folder, episodes_file, tmp_path, fresh_settings):
    fresh_settings.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    metrics = run_training(options(folder, episodes_file))
    assert metrics["base_kind"] == "hybrid" and metrics["n_val"] >= 5
    assert metrics["val_rr"] == pytest.approx(metrics["val_rr_baseline"])
    assert set(metrics["val_rr"]) == set(metrics["val_rr_retrieval"])
    assert metrics["fusion_alpha"] == 1.0 and metrics["val_baseline"] == "base fused at alpha 1"


def test_steps_train_the_folder_and_the_result_serves(folder, episodes_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    metrics = run_training(options(folder, episodes_file, steps=3, lr=5e-2))
    out = metrics["artifact"]
    assert is_hybrid_dir(out)
    card = json.loads((tmp_path / "var/artifacts/training/tune/model/card.json").read_text())
    assert card["fusion_alpha"] == 1.0 and card["options"]["users"] == "all"
    before = torch.load(folder / "projector.pt", weights_only=True)
    after = torch.load(f"{out}/projector.pt", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    # the gate's numbers are the exported folder's, served through the engine
    from recsys.training import load_episodes, split

    opts = options(folder, episodes_file)
    _, val = split(opts, load_episodes(opts, tmp_path))
    assert served_rr(out, 1.0, val, "cpu") == pytest.approx(metrics["val_rr"])
    assert served_rr(folder, 1.0, val, "cpu") == pytest.approx(metrics["val_rr_baseline"])


def test_a_committee_is_refused_with_what_to_do(folder, episodes_file, tmp_path):
    write_committee(tmp_path / "both", CommitteeSpec.of(["../hybrid", "../hybrid"], [1, 1]))
    with pytest.raises(UserError, match=r"is a committee .* Fine-tune a member"):
        run_training(options(tmp_path / "both", episodes_file))


def test_jsonl_episodes_keep_the_history_ids(episodes_file) -> None:
    from ranking.rl.episodes import read_episodes

    (first, *_) = read_episodes(episodes_file)
    assert first.request.history_ids and len(first.request.history_ids) == 3


def test_a_loop_turn_tunes_gates_and_replays_a_promoted_hybrid(
    tmp_path, monkeypatch, tiny_model_dir, sqlite_url
):
    """The closed loop with a hybrid serving: traffic served and logged by it, one turn
    fine-tunes it (a hybrid candidate, registered with the gate's numbers), gates it and
    replays it against the base with the hybrid's own propensities."""
    from fastapi.testclient import TestClient

    from ranking.hybrid import Hybrid, HybridConfig
    from ranking.loading import _load_transformers, resolve_model
    from recsys.api import create_app
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.registry import list_models, register_model
    from recsys.loop import LoopConfig, improve
    from recsys.registry import promote
    from recsys.settings import get_settings
    from recsys.simulate import SimulationConfig, simulate
    from tests.fixtures.loop_world import N_ITEMS, build_world

    env = {"RECSYS_DATABASE_URL": sqlite_url, "RECSYS_VAR_DIR": str(tmp_path),
           "RECSYS_EMBEDDINGS": "hashing", "RECSYS_MODEL": "promoted"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        ensure_schema()
        engine = get_engine()
        traffic = build_world(engine, tmp_path / "artifacts", n_users=30)
        backend = _load_transformers(resolve_model(str(tiny_model_dir)), "cpu")
        items = [f"i{j}" for j in range(N_ITEMS)]
        vectors = np.random.default_rng(1).normal(size=(N_ITEMS, 5)).astype(np.float32)
        config = HybridConfig(base=str(tiny_model_dir), inject_layer=1, vector_dim=5)
        folder = Hybrid(backend.model, backend.tokenizer, items, vectors, config).save(
            tmp_path / "h0"
        )
        register_model("ranker", "h0", str(folder), metrics={"fusion_alpha": 1.0}, engine=engine)
        promote("ranker", "h0", force=True, engine=engine)
        settings = get_settings().model_copy(update={"require_api_key": False, "reload_poll_s": 0})
        with TestClient(create_app(settings=settings)) as client:
            simulate(client, traffic, SimulationConfig(k=8, concurrency=2), progress=False)
        loop = LoopConfig(min_requests=5, steps=2, batch_size=2, lr=1e-3, val_fraction=0.5,
                          replay_draws=2)  # fmt: skip
        result = improve(loop, settings=get_settings(), engine=engine)
        versions = {v.version: v for v in list_models("ranker", engine=engine)}
        candidate = versions[result["candidate"]]
        assert candidate.metrics["base_kind"] == "hybrid"
        assert candidate.metrics["fusion_alpha"] == 1.0  # tuned at the base's weight
        assert is_hybrid_dir(candidate.artifact_uri) and result["gate"]["reason"]
        report = json.loads((tmp_path / "artifacts/replay" / candidate.version / "report.json")
                            .read_text())  # fmt: skip
        assert report["off_policy"]["rounds"] > 0 and report["off_policy"]["ess"] > 0
    finally:
        get_settings.cache_clear()


def test_an_unset_learning_rate_is_the_base_kinds(
    folder, episodes_file, tmp_path, fresh_settings, tiny_model_dir
):
    """`--lr` / RECSYS_LOOP_LR unset: 2e-4 for a hybrid's adapter and projector, 1e-5 for a
    plain LM (recsys.training.DEFAULT_LR); the run records the one it used."""
    fresh_settings.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    runs = tmp_path / "var/artifacts/training"
    run_training(options(folder, episodes_file, lr=None, run_name="hybrid"))
    card = json.loads((runs / "hybrid/model/card.json").read_text())
    assert card["trained_with"]["lr"] == 2e-4
    run_training(options(tiny_model_dir, episodes_file, lr=None, run_name="plain"))
    assert json.loads((runs / "plain/options.json").read_text())["lr"] == 1e-5
