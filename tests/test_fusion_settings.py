"""Score fusion's settings outside the engine: the CLI and the API, the registry and model
cards (which weight a ranker is served and tuned at), and the eval harness."""

from __future__ import annotations

import dataclasses
import json

import pytest
from fastapi.testclient import TestClient

from ranking.engine import Ranker
from ranking.fusion import (
    RETRIEVAL_ORDER,
)
from ranking.types import Candidate, RankRequest
from tests.fixtures.cli import run_cli
from tests.test_fusion import by_score, same_result, scored_request

# ---------------------------------------------------------------- CLI and API


def request_json(req: RankRequest, **extra) -> str:
    cands = [{"id": c.id, "text": c.text, "score": c.score} for c in req.candidates]
    body = {"task": req.task, "history": list(req.history), "candidates": cands}
    return json.dumps({**body, **extra})


def test_cli_rank_accepts_fusion_alpha(fresh_settings, capsys, tiny_model_dir):
    req = scored_request(6, shuffle=2)
    args = ["rank", "-r", "-", "--model", str(tiny_model_dir), "--device", "cpu"]
    stdin = request_json(req, fusion_alpha=1e4)
    code, out, _ = run_cli(fresh_settings, capsys, args, stdin=stdin)
    assert code == 0
    result = json.loads(out)
    assert result["order"] == by_score(req)
    assert result["fusion_alpha"] == 1e4 and result["fusion_note"] is None


def test_cli_rank_reads_the_setting(fresh_settings, capsys, tiny_model_dir):
    req = scored_request(6, shuffle=2)
    fresh_settings.setenv("RECSYS_FUSION_ALPHA", "10000")
    args = ["rank", "-r", "-", "--model", str(tiny_model_dir), "--device", "cpu"]
    code, out, _ = run_cli(fresh_settings, capsys, args, stdin=request_json(req))
    assert code == 0
    assert json.loads(out)["order"] == by_score(req)
    assert json.loads(out)["fusion_alpha"] == 1e4


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        (None, {"fusion_alpha": -2}, "error: fusion_alpha must be a finite number >= 0"),
        ("-1", {}, "error: invalid setting RECSYS_FUSION_ALPHA='-1'"),
        ("nan", {}, "error: invalid setting RECSYS_FUSION_ALPHA='nan'"),
    ],
)
def test_cli_rank_bad_fusion_exits_2(fresh_settings, capsys, tiny_model_dir, env, extra, message):
    if env is not None:
        fresh_settings.setenv("RECSYS_FUSION_ALPHA", env)
    args = ["rank", "-r", "-", "--model", str(tiny_model_dir), "--device", "cpu"]
    stdin = request_json(scored_request(3), **extra)
    code, _, err = run_cli(fresh_settings, capsys, args, stdin=stdin)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_api_rank_takes_and_reports_fusion_alpha(tiny_ranker):
    from recsys.api import create_app
    from recsys.settings import Settings

    req = scored_request(6, shuffle=2)
    app = create_app(ranker=tiny_ranker, settings=Settings(batch_wait_ms=1.0))
    with TestClient(app) as client:
        answer = client.post("/v1/rank", json=json.loads(request_json(req, fusion_alpha=1e4)))
        bad = client.post("/v1/rank", json=json.loads(request_json(req, fusion_alpha=-1)))
    assert answer.status_code == 200
    assert answer.json()["order"] == by_score(req)
    assert answer.json()["fusion_alpha"] == 1e4
    assert bad.status_code == 422
    assert "fusion_alpha: Input should be greater than or equal to 0" in bad.json()["error"]


# ---------------------------------------------------------------- registry precedence


@pytest.mark.parametrize(
    ("setting", "registered", "served"),
    [(None, None, 0.0), (None, 3.0, 3.0), (1.5, 3.0, 1.5), (0.0, 3.0, 0.0), (2.0, None, 2.0)],
)
def test_serving_alpha_precedence(setting, registered, served):
    from recsys.resolver import serving_fusion_alpha

    assert serving_fusion_alpha(setting, registered) == served


def test_registered_version_is_served_with_its_alpha(fresh_settings, sqlite_engine, tiny_model_dir):
    from recsys.db.registry import register_model
    from recsys.resolver import resolve_ranker
    from recsys.runtime import load_ranker

    model, eng = str(tiny_model_dir), sqlite_engine
    register_model("ranker", "fused", model, metrics={"fusion_alpha": 3.0}, engine=eng)
    register_model("ranker", "plain", model, engine=eng)
    assert resolve_ranker("fused", engine=sqlite_engine).fusion_alpha == 3.0
    assert resolve_ranker("plain", engine=sqlite_engine).fusion_alpha is None

    def served(spec, **kw):
        ranker = load_ranker(engine=sqlite_engine, model=spec, device="cpu", **kw)
        return ranker.fusion_alpha

    assert served("fused") == 3.0  # the version's own weight
    assert served("plain") == 0.0
    assert served(str(tiny_model_dir)) == 0.0  # a bare path has no registered weight
    # a registered version is served and tuned at the one weight it was measured with
    fused = resolve_ranker("fused", engine=sqlite_engine)
    assert (fused.fusion_alpha, fused.training_alpha, fused.unvalidated) == (3.0, 3.0, False)
    assert served("fused", fusion_alpha=0.5) == 0.5  # an explicit setting wins
    fresh_settings.setenv("RECSYS_FUSION_ALPHA", "1.5")
    from recsys.settings import get_settings

    get_settings.cache_clear()
    assert served("fused") == 1.5  # RECSYS_FUSION_ALPHA wins over the version
    # and a request's own weight wins over the ranker's default
    ranker = load_ranker(engine=sqlite_engine, model="fused", device="cpu")
    res = ranker.rank(scored_request(5, fusion_alpha=0.0))
    assert res.fusion_alpha == 0.0


@pytest.mark.parametrize("spec", ["default", "gemma3-270m"])
def test_zero_shot_packaged_models_serve_the_retrieval_order_and_tune_at_10(spec):
    from recsys.resolver import (
        UNVALIDATED_SERVING_ALPHA,
        UNVALIDATED_TRAINING_ALPHA,
        resolve_ranker,
    )

    assert (UNVALIDATED_SERVING_ALPHA, UNVALIDATED_TRAINING_ALPHA) == (RETRIEVAL_ORDER, 10.0)
    resolved = resolve_ranker(spec)
    assert resolved.model == spec and resolved.version is None and resolved.unvalidated
    assert resolved.fusion_alpha == RETRIEVAL_ORDER  # served: the retrieval order itself
    assert resolved.training_alpha == 10.0  # fine-tuned and validated: where the LM has a say


def test_a_model_folder_s_card_weight_is_served_and_tuned(tmp_path, tiny_model_dir):
    import shutil

    from recsys.resolver import resolve_ranker

    folder = tmp_path / "carded"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "card.json").write_text(json.dumps({"fusion_alpha": 7.5}))
    resolved = resolve_ranker(str(folder))
    assert (resolved.fusion_alpha, resolved.training_alpha) == (7.5, 7.5)
    assert not resolved.unvalidated
    bare = resolve_ranker(str(tiny_model_dir))
    assert (bare.fusion_alpha, bare.training_alpha, bare.unvalidated) == (None, None, False)


@pytest.fixture
def default_is_tiny(fresh_settings, tiny_backend):
    """`--model default` loads the tiny random model (no 135M load): what is checked is the
    weight the packaged default is served with, whatever its weights."""
    import ranking.loading

    loaded = []

    def load(model, **kwargs):
        loaded.append(str(model))
        return tiny_backend

    fresh_settings.setattr(ranking.loading, "load_backend", load)
    tiny_backend.clear_cache()
    return loaded


def test_the_default_is_served_as_the_retrieval_order(default_is_tiny, fresh_settings):
    """A fresh machine's default never ranks worse than the retrieval order: it is that
    order. An explicit setting and a request's own weight still override it."""
    from recsys.runtime import load_ranker
    from recsys.settings import get_settings

    req = scored_request(8, shuffle=5)
    ranker = load_ranker(model="default", device="cpu")
    assert default_is_tiny == ["default"]
    assert ranker.fusion_alpha == RETRIEVAL_ORDER
    res = ranker.rank(req)
    assert res.order == by_score(req) != list(req.ids)
    assert res.log_propensity == 0.0 and res.fusion_alpha == RETRIEVAL_ORDER
    alone = ranker.rank(dataclasses.replace(req, fusion_alpha=0.0))  # the request's weight
    same_result(alone, Ranker(ranker.backend).rank(req))
    assert load_ranker(model="default", device="cpu", fusion_alpha=2.0).fusion_alpha == 2.0
    fresh_settings.setenv("RECSYS_FUSION_ALPHA", "0")
    get_settings.cache_clear()
    assert load_ranker(model="default", device="cpu").fusion_alpha == 0.0


def test_api_answers_and_logs_the_retrieval_order_default(tiny_backend, engine):
    """On SQLite and PostgreSQL: the infinite weight is null in the answer and in the
    impression log (PostgreSQL's JSONB refuses Infinity)."""
    import sqlalchemy as sa

    from recsys.api import create_app
    from recsys.db.models import Impression
    from recsys.settings import Settings

    req = scored_request(6, shuffle=2)
    ranker = Ranker(tiny_backend, fusion_alpha=RETRIEVAL_ORDER)
    app = create_app(ranker=ranker, settings=Settings(batch_wait_ms=1.0), engine=engine)
    with TestClient(app) as client:
        body = {**json.loads(request_json(req)), "user_id": "u1"}
        answer = client.post("/v1/rank", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["order"] == by_score(req)
    assert answer.json()["fusion_alpha"] is None and answer.json()["log_propensity"] == 0.0
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Impression.propensity, Impression.context).order_by(Impression.position)
        ).all()
    assert len(rows) == 6 and {r.propensity for r in rows} == {1.0}
    assert {r.context["fusion_alpha"] for r in rows} == {None}


def test_bad_registered_alpha_is_a_clear_error(sqlite_engine, tiny_model_dir):
    from recsys.db.registry import register_model
    from recsys.errors import UserError
    from recsys.resolver import resolve_ranker

    register_model(
        "ranker", "odd", str(tiny_model_dir), metrics={"fusion_alpha": "x"}, engine=sqlite_engine
    )
    with pytest.raises(UserError, match="ranker 'odd' has fusion_alpha 'x', which is not a finite"):
        resolve_ranker("odd", engine=sqlite_engine)


# ---------------------------------------------------------------- the eval harness


@pytest.fixture(scope="module")
def rec_task(tmp_path_factory):
    from recsys.eval.tasks import build_task
    from tests.fixtures.data import tiny_ml100k

    data = tiny_ml100k(tmp_path_factory.mktemp("fusion") / "ml", users=6)
    return build_task("rec-movie", data, 7)


def test_eval_fuses_rec_tasks_with_the_training_signal(tiny_backend, rec_task):
    """Random-negative rec candidates carry no score: the harness scores them with the
    baseline `recsys train` uses (transitions), and a large alpha then follows it."""
    from recsys.eval import harness
    from recsys.eval.rankers import make_baseline

    assert all(c.score is None for i in rec_task.instances for c in i.candidates)
    evaluator = harness.EngineRanker(Ranker(tiny_backend, fusion_alpha=1e4), "incremental")
    run = harness.evaluate(evaluator, rec_task, progress=False)
    assert run.ranker == "incremental+fusion@10000" and run.bad_permutations == 0
    signal = make_baseline("transitions")
    signal.prepare(rec_task)
    for inst in rec_task.instances[:3]:
        (res,) = evaluator.rank_instances([inst])
        score = dict(zip(inst.ids, signal.scores(inst), strict=True))
        ranked = [score[cid] for cid in res.order]
        assert ranked == sorted(ranked, reverse=True)  # ties: the ranker decides
        assert res.fusion_alpha == 1e4


def test_eval_uses_a_task_s_own_scores(tiny_backend):
    from recsys.eval import harness
    from recsys.eval.tasks import Instance, TaskSet

    req = scored_request(6, shuffle=8)
    inst = Instance(
        id="p:1", task="passage-5", request_task="passage", candidates=req.candidates,
        relevance={"m0": 1.0}, query="a question",
    )  # fmt: skip
    evaluator = harness.EngineRanker(Ranker(tiny_backend), "score", fusion_alpha=1e4)
    evaluator.prepare(TaskSet("passage-5", [inst]))
    assert evaluator.scorer is None
    assert evaluator.rank_instances([inst])[0].order == by_score(req)


@pytest.mark.parametrize(
    ("task", "signal", "message"),
    [
        ("router-perf", "transitions", "--fusion-signal transitions: baseline 'transitions' does"),
        ("rec-movie", "none", "--fusion-alpha needs candidate scores and 'rec-movie' has none"),
        ("rec-movie", "magic", "unknown baseline 'magic'"),
    ],
)
def test_eval_fusion_without_scores_is_a_clear_error(tiny_backend, task, signal, message):
    from recsys.errors import UserError
    from recsys.eval import harness
    from recsys.eval.tasks import Instance, TaskSet

    cands = (Candidate("a", "A"), Candidate("b", "B"))
    inst = Instance(id="x", task=task, request_task=task, candidates=cands, relevance={"a": 1.0})
    evaluator = harness.EngineRanker(Ranker(tiny_backend, fusion_alpha=1.0), "incremental")
    evaluator.fusion_signal = signal
    with pytest.raises(UserError, match=message):
        evaluator.prepare(TaskSet(task, [inst]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ranker", "bm25", "--fusion-alpha", "1"], "--fusion-alpha applies to engine modes"),
        (["--ranker", "reason", "--fusion-alpha", "1"], "reason cannot fuse"),
        (["--ranker", "lambdamart-lm", "--fusion-alpha", "1"], "does not apply to lambdamart-lm"),
        (["--fusion-alpha", "-1"], "--fusion-alpha must be a finite number >= 0"),
        (["--fusion-alpha", "nan"], "--fusion-alpha must be a finite number >= 0"),
        (["--ranker", "bm25", "--fusion-abstain-below", "5"],
         "--fusion-abstain-below applies to engine modes"),
        (["--fusion-abstain-below", "5"], "it needs --fusion-alpha > 0"),
        (["--ranker", "bm25", "--lgb-bag", "3"], "--lgb-bag averages LambdaMART fits"),
        (["--ranker", "lambdamart", "--lgb-bag", "0"], "--lgb-bag 0: give a whole number"),
    ],
)  # fmt: skip
def test_cli_eval_bad_fusion_exits_2(fresh_settings, capsys, args, message):
    base = ["eval", "--task", "rec-movie", "--data", "/nonexistent", "--no-progress"]
    code, _, err = run_cli(fresh_settings, capsys, [*base, *args])
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "alpha"),
    [
        (["--model", "default"], 0.0),  # the LM measured alone, not its served retrieval order
        (["--model", "gemma3-270m"], 0.0),
        (["--model", "default", "--fusion-alpha", "2"], 2.0),  # as asked
    ],
)
def test_cli_eval_measures_the_zero_shot_default_as_asked(fresh_settings, capsys, args, alpha):
    from recsys.errors import UserError
    from recsys.eval import harness

    asked = []

    def make_ranker(name, **kwargs):
        asked.append((name, kwargs["model"], kwargs["fusion_alpha"]))
        raise UserError("stop before loading")

    fresh_settings.setattr(harness, "make_ranker", make_ranker)
    base = ["eval", "--task", "rec-movie", "--data", "/nonexistent", "--no-progress"]
    code, _, err = run_cli(fresh_settings, capsys, [*base, *args])
    assert code == 2 and "stop before loading" in err
    assert asked == [("incremental", args[1], alpha)]


def test_cli_eval_fusion_alpha_end_to_end(fresh_settings, capsys, tmp_path, tiny_model_dir):
    from tests.fixtures.data import tiny_ml100k

    data = tiny_ml100k(tmp_path / "ml", users=4)
    out = tmp_path / "results.json"
    args = ["eval", "--task", "rec-movie", "--data", str(data), "--model", str(tiny_model_dir),
            "--fusion-alpha", "2", "--limit", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    code, stdout, _ = run_cli(fresh_settings, capsys, args)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["fusion_alpha"] == 2.0
    assert result["config"]["fusion_signal"] == "transitions"
    run = result["runs"][0]
    assert run["ranker"] == "incremental+fusion@2" and run["n"] == 2
    assert run["bad_permutations"] == 0
    assert "| rec-movie | incremental+fusion@2 | 2 |" in stdout


def test_a_job_loads_the_version_it_decided_with(fresh_settings, sqlite_engine, tiny_model_dir):
    """`served_ranker` resolves 'promoted' once; loading from it sees that version even
    when another is promoted in between (the batch job decides, then loads)."""
    from recsys.db.registry import promote_model, register_model
    from recsys.runtime import load_ranker, served_ranker

    eng, model = sqlite_engine, str(tiny_model_dir)
    register_model("ranker", "v1", model, metrics={"fusion_alpha": 3.0}, engine=eng)
    register_model("ranker", "v2", model, metrics={"fusion_alpha": 7.0}, engine=eng)
    promote_model("ranker", "v1", engine=eng)
    served = served_ranker(engine=eng, model="promoted")
    assert (served.resolved.version, served.fusion_alpha, served.follows_retrieval) == (
        "v1",
        3.0,
        False,
    )
    promote_model("ranker", "v2", engine=eng)
    assert load_ranker(engine=eng, served=served, device="cpu").fusion_alpha == 3.0
    assert load_ranker(engine=eng, model="promoted", device="cpu").fusion_alpha == 7.0
    assert served_ranker(model="default").follows_retrieval
