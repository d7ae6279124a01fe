"""`recsys demo` end to end: a tiny synthetic MovieLens folder, a tiny random-weight ranker."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ranking.metrics import hit_at_k, reciprocal_rank
from recsys.cli import app, main
from recsys.datasets import ML100K_GENRES
from tests.fixtures.data import write_ml100k

N_USERS, PER_GENRE, PER_USER, K = 12, 8, 6, 5
GENRES = ["Action", "Comedy", "Horror"]


def write_movielens(folder):
    """Users of genre g watch films of genre g, one per day; returns each user's last item."""
    rng = np.random.default_rng(0)
    titles, genres = {}, {}
    for g, genre in enumerate(GENRES):
        for j in range(PER_GENRE):
            item = g * PER_GENRE + j + 1
            titles[item] = f"{genre} Film {j} (1995)"
            genres[item] = ML100K_GENRES.index(genre)
    rows, last = [], {}
    for user in range(1, N_USERS + 1):
        g = user % len(GENRES)
        picks = rng.choice(PER_GENRE, PER_USER, replace=False)
        for day, j in enumerate(picks):
            item = g * PER_GENRE + int(j) + 1
            rows.append((user, item, 4, 880000000 + 86400 * day))
            last[str(user)] = str(item)
    write_ml100k(folder, rows, titles, genres=genres)
    return last


@pytest.fixture
def demo_env(tmp_path, monkeypatch, database_url):
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RECSYS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    from recsys.db.engine import dispose_engines

    dispose_engines()


def test_demo_end_to_end_stores_lists_and_prints_metrics(demo_env, tiny_model_dir, database_url):
    """On SQLite and PostgreSQL (a fresh schema each)."""
    from recsys.db.engine import get_engine
    from recsys.db.events import user_history
    from recsys.db.models import Interaction
    from recsys.db.registry import get_model
    from recsys.db.runs import recommendations_for
    from recsys.db.testing import count_rows
    from retrieval.artifacts import ArtifactStore
    from retrieval.generator import CandidateGenerator

    targets = write_movielens(demo_env / "ml-tiny")
    args = ["demo", "--data", str(demo_env / "ml-tiny"), "--users", "0", "--k", str(K),
            "--model", str(tiny_model_dir), "--embeddings", "hashing", "--cf-epochs", "30",
            "--no-progress", "--report", str(demo_env / "report.json")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    expected = ["== examples ==", "recent history:", "== metrics", "retrieval + IRanker",
                f"recall@{K}", "hit@10", "== time per stage", "rerank", "cf", "stored"]  # fmt: skip
    for text in expected:
        assert text in out
    report = json.loads((demo_env / "report.json").read_text())
    assert report["stored"] == N_USERS * K and report["evaluated_users"] == N_USERS
    engine = get_engine(database_url)

    # the stored lists: K items each, unseen by the user, ranked by the tiny model
    stored = {}
    for user, target in targets.items():
        rows = recommendations_for(user, report["run_id"], engine=engine)
        assert [r.rank for r in rows] == list(range(1, K + 1))
        assert {r.model_version for r in rows} == {report["model_version"]}
        history = {h.item_id for h in user_history(user, 100, engine=engine)}
        assert not {r.item_id for r in rows} & (history - {target}), "seen items excluded"
        stored[user] = [r.item_id for r in rows]
    # the per-user ranks are those of the stored lists, and give the printed MRR
    ranks = report["target_ranks"]
    assert set(ranks) == set(targets)
    for user, target in targets.items():
        served = stored[user].index(target) + 1 if target in stored[user] else None
        assert ranks[user]["served"] == served
    from_ranks = np.mean([1 / r["served"] if r["served"] else 0.0 for r in ranks.values()])
    # the printed IRanker metrics are those of the stored lists
    final = report["metrics"][f"retrieval + IRanker, {N_USERS} sampled users"]
    assert final["hit@10"] == pytest.approx(
        np.mean([hit_at_k(stored[u], t, 10) for u, t in targets.items()]), abs=1e-4
    )
    assert final["mrr"] == pytest.approx(
        np.mean([reciprocal_rank(stored[u], t) for u, t in targets.items()]), abs=1e-4
    )
    assert final["mrr"] == pytest.approx(from_ranks, abs=1e-4)
    only_ranks = [r["retrieval"] for r in ranks.values()]
    assert report["metrics"][f"retrieval only, {N_USERS} sampled users"]["mrr"] == pytest.approx(
        np.mean([1 / r if r else 0.0 for r in only_ranks]), abs=1e-4
    )
    # re-ranking permutes the retrieved candidates: the same set, so recall@K is unchanged
    only = report["metrics"][f"retrieval only, {N_USERS} sampled users"]
    assert final[f"recall@{K}"] == only[f"recall@{K}"]
    # the printed paired gain is that of the stored lists over the retrieval order
    gain = report["paired"]["mrr"]
    assert gain["users"] == N_USERS and gain["low"] <= gain["mean"] <= gain["high"]
    assert gain["mean"] == pytest.approx(final["mrr"] - only["mrr"], abs=2e-4)
    assert "re-ranked - retrieval, mrr (paired, 12 users)" in out
    # the planted genre structure is found: well above random (K / unseen items ~ 5/18)
    assert report["metrics"][f"retrieval, all {N_USERS} users"][f"recall@{K}"] >= 0.5

    # the retrieval artifact is registered and loadable by its version
    info = get_model("index", report["retrieval_version"], engine=engine)
    gen = CandidateGenerator.load(
        ArtifactStore(demo_env / "var" / "artifacts"), report["retrieval_version"]
    )
    assert (
        info.metrics[f"recall@{K}"]
        == report["metrics"][f"retrieval, all {N_USERS} users"][f"recall@{K}"]
    )
    assert len(gen.user_ids) == N_USERS

    # a second run re-uses the ingested data (idempotent) and writes a new run
    count = count_rows(Interaction, engine=engine)
    assert report["timings"]["ltr"] > 0  # the LambdaMART stage ran, as in `recsys batch`
    again = CliRunner().invoke(app, [*args[:-2], "--no-rerank", "--no-ltr"])
    assert again.exit_code == 0, again.output
    assert "ranker: none (retrieval order)" in again.output
    assert "\n  ltr " not in again.output  # no LambdaMART stage in the stage times
    assert count_rows(Interaction, engine=engine) == count


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/nonexistent/ml"], "data folder /nonexistent/ml does not exist"),
        (["--embeddings", "bert"], "unknown --embeddings 'bert'"),
        (["--k", "0"], "--k and history must be >= 1"),
    ],
)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_bad_input_is_one_line_and_exit_2(demo_env, monkeypatch, capsys, extra, message):
    data = demo_env / "ml-tiny"
    write_movielens(data)
    argv = ["recsys", "demo", "--data", str(data), "--no-rerank", "--no-progress", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("fusion_alpha", "loads"), [(None, False), ("10", True)])
def test_demo_with_the_default_model_serves_the_retrieval_order(
    demo_env, monkeypatch, tiny_backend, fusion_alpha, loads
):
    """The zero-shot default is served at the retrieval order (recsys.resolver): the demo
    neither loads nor calls it and stores exactly the retrieval lists. An explicit weight
    (RECSYS_FUSION_ALPHA) gives the LM a say: then it is loaded and re-ranks. The packaged
    model's weights are stood in for by the tiny model."""
    import ranking.loading
    from recsys.db.engine import get_engine
    from recsys.db.runs import recommendations_for
    from recsys.settings import get_settings
    from retrieval.artifacts import ArtifactStore
    from retrieval.generator import CandidateGenerator

    if fusion_alpha is not None:
        monkeypatch.setenv("RECSYS_FUSION_ALPHA", fusion_alpha)
        get_settings.cache_clear()
    loaded = []
    monkeypatch.setattr(
        ranking.loading, "load_backend", lambda model, **kw: loaded.append(model) or tiny_backend
    )
    targets = write_movielens(demo_env / "ml-tiny")
    args = ["demo", "--data", str(demo_env / "ml-tiny"), "--users", "0", "--k", str(K),
            "--model", "default", "--embeddings", "hashing", "--no-progress",
            "--report", str(demo_env / "report.json")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((demo_env / "report.json").read_text())
    reranked = f"retrieval + IRanker, {N_USERS} sampled users"
    assert loaded == (["default"] if loads else [])
    skipped = "re-ranking skipped: 'default' is served at the retrieval order"
    assert (skipped in result.output) != loads
    assert (reranked in report["metrics"]) == loads and ("rerank" in report["timings"]) == loads
    if loads:
        return
    assert report["model_version"] is None and "ranker: none (retrieval order)" in result.output
    gen = CandidateGenerator.load(
        ArtifactStore(demo_env / "var" / "artifacts"), report["retrieval_version"]
    )
    engine = get_engine()
    for user in targets:
        stored = [r.item_id for r in recommendations_for(user, report["run_id"], engine=engine)]
        assert stored == [str(c.item) for c in gen.candidates(user, K)]


def test_the_paired_gain_is_per_user_and_known() -> None:
    from recsys.pipeline import paired_gain

    targets = {"u1": "a", "u2": "b", "u3": "c"}
    before = {"u1": ["x", "a"], "u2": ["b", "x"], "u3": ["x", "y"]}  # RR 1/2, 1, 0
    after = {"u1": ["a", "x"], "u2": ["b", "x"], "u3": ["y", "x"]}  # RR 1, 1, 0
    gain = paired_gain(after, before, targets)
    assert gain["mrr"]["mean"] == pytest.approx(0.5 / 3) and gain["mrr"]["users"] == 3
    assert gain["mrr"]["low"] >= 0  # no user got worse: every resample is >= 0
    assert gain["ndcg@10"]["mean"] == pytest.approx((1 - 1 / np.log2(3)) / 3)
    assert paired_gain({"u9": ["a"]}, {"u9": ["a"]}, targets) == {}  # no target: no gain


def card_folder(folder, data=None, users="train"):
    folder.mkdir(parents=True)
    card = {"options": {"users": users}, **({"data": data} if data is not None else {})}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize(
    ("data", "users", "rule"),
    [
        ({"heldout_fraction": 0.35, "seed": 7}, "train", (0.35, 7)),
        ({"heldout_fraction": 0.35, "seed": 7}, "all", None),  # it read every user's logs
        ({"seed": 7}, "train", None),  # the card does not say
        (None, "train", None),
    ],
)
def test_the_heldout_rule_comes_from_the_card(tmp_path, data, users, rule) -> None:
    from recsys.resolver import heldout_rule

    assert heldout_rule(str(card_folder(tmp_path / "m", data, users))) == rule
    assert heldout_rule(str(tmp_path / "no-such-model")) is None


def test_a_committees_rule_is_its_members_when_they_agree(tmp_path) -> None:
    from ranking.backends.committee import CommitteeSpec, write_committee
    from recsys.resolver import heldout_rule

    card_folder(tmp_path / "a", {"heldout_fraction": 0.35, "seed": 7})
    card_folder(tmp_path / "b", {"heldout_fraction": 0.35, "seed": 7})
    card_folder(tmp_path / "c", {"heldout_fraction": 0.35, "seed": 8})
    write_committee(tmp_path / "ab", CommitteeSpec.of(["../a", "../b"]))
    write_committee(tmp_path / "ac", CommitteeSpec.of(["../a", "../c"]))
    assert heldout_rule(str(tmp_path / "ab")) == (0.35, 7)
    assert heldout_rule(str(tmp_path / "ac")) is None


def test_the_demo_reports_the_users_the_ranker_never_trained_on(tmp_path) -> None:
    from types import SimpleNamespace

    from recsys.eval.instances import is_heldout
    from recsys.pipeline import unseen_by

    folder = card_folder(tmp_path / "m", {"heldout_fraction": 0.35, "seed": 7})
    orders = {str(u): ["x"] for u in range(1, 201)}
    unseen = unseen_by(SimpleNamespace(resolved=SimpleNamespace(model=str(folder))), orders)
    assert set(unseen) == {u for u in orders if is_heldout(u, 7, 0.35)}
    assert 40 < len(unseen) < 100  # about 35% of 200
    no_card = SimpleNamespace(resolved=SimpleNamespace(model="default"))
    assert unseen_by(no_card, orders) == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_demo_fuses_the_next_source_unless_told_not_to(demo_env):
    from retrieval.artifacts import ArtifactStore
    from retrieval.generator import CandidateGenerator

    write_movielens(demo_env / "ml-tiny")
    store = ArtifactStore(demo_env / "var" / "artifacts")
    for flags, on in (([], True), (["--no-next-source"], False)):
        report_file = demo_env / f"report-{on}.json"
        args = ["demo", "--data", str(demo_env / "ml-tiny"), "--no-rerank", "--no-ltr",
                "--embeddings", "hashing", "--no-progress", "--report", str(report_file),
                *flags]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        version = json.loads(report_file.read_text())["retrieval_version"]
        assert (CandidateGenerator.load(store, version).next_source is not None) is on


def test_batch_and_demo_requests_carry_the_history_ids_a_hybrid_reads() -> None:
    """`recsys batch` and `recsys demo` build their requests here. A hybrid model reads each
    history item as its CF soft token; with titles only (no ids) its prompt showed the raw
    titles, a history it was never trained on."""
    from types import SimpleNamespace

    from ranking.prompts import PromptStyle, elimination_prompt
    from recsys.pipeline import rank_requests
    from retrieval.fusion import FusedCandidate

    recent = {"u1": ["7", "3", "9"], "u2": []}
    gen = SimpleNamespace(
        history=lambda user, limit: recent[user][-limit:], interactions=lambda item: 4
    )
    cands = [FusedCandidate(item="5", score=1.0, ranks={"cf": 1}),
             FusedCandidate(item="8", score=0.5, ranks={"cf": 2})]  # fmt: skip
    titles = {"7": "Heat", "3": "Alien", "9": "Fargo", "5": "Babe", "8": "Rocky"}
    requests = rank_requests(gen, {"u1": cands, "u2": cands}, titles, history=2)
    assert requests["u1"].history_ids == ("3", "9")
    assert requests["u1"].history == ("Alien", "Fargo")
    assert requests["u2"].history_ids == () and requests["u2"].history == ()
    assert requests["u1"].request_id == "demo-u1"  # the job that asked, for the logs
    batch = rank_requests(gen, {"u1": cands}, titles, history=2, job="batch")
    assert batch["u1"].request_id == "batch-u1"
    tokens = {i: f"<|item:{i}|>" for i in titles}
    style = PromptStyle(template="short", title_chars=0, item_tokens=tokens)
    req = requests["u1"]
    prompt = elimination_prompt(req, req.candidates, ["A", "B"], style)
    assert "Seen: <|item:3|><|item:9|>\n" in prompt
    assert "Alien" not in prompt and "Fargo" not in prompt
