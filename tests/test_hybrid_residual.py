"""Training the fused policy (`train-ranker --residual-alpha`): the episodes' LambdaMART
scores are honest (no episode's target reaches the models that score it), the trainer's
fused steps are the served engine's, and a fused run learns the close calls only the
vectors can settle."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from ranking.engine import Ranker
from ranking.fusion import fuse_step, fusion_bias
from ranking.rl.episodes import Episode
from ranking.rl.supervised import (
    Prepared,
    StyledTokenizer,
    SupervisedConfig,
    SupervisedTrainer,
    batch_step_logprobs,
    on_path,
    prepare,
)
from ranking.types import Candidate, RankRequest
from recsys.errors import UserError
from recsys.hybrid_residual import aligned, build_residual_episodes, truncated
from recsys.hybrid_training import HybridTrainOptions, train_hybrid
from tests.fixtures.cli import run_cli
from tests.fixtures.data import tiny_ml100k
from tests.test_hybrid import fresh_hybrid, quality_episodes


def test_truncated_drops_the_last_rows_of_the_listed_users_only() -> None:
    log = pl.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c", "c", "c"],
                        "item_id": ["1", "2", "3", "4", "5", "6", "7", "8"]})  # fmt: skip
    out = truncated(log, {"a", "b"}, 2)
    assert out.rows() == [("a", "1"), ("c", "6"), ("c", "7"), ("c", "8")]


def scored_request(ids: list[str], scores: list[float | None], history: list[str]) -> RankRequest:
    return RankRequest(
        task="rec-movie",
        candidates=tuple(
            Candidate(id=i, text=f"Movie {i}", score=s) for i, s in zip(ids, scores, strict=True)
        ),
        history=tuple(f"Movie {h}" for h in history),
        history_ids=tuple(history),
    )


def test_fused_training_steps_are_the_served_fused_steps(tiny_model_dir) -> None:
    """With fusion_alpha the trainer's step log-probs are ranking.fusion's fuse_step of the
    LM's own steps, candidate by candidate (the bias the engine adds at that weight)."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    builder = StyledTokenizer(backend.tokenizer, hybrid.style)
    ids, scores = ["1", "2", "3", "4", "5"], [0.3, -1.2, 2.0, 0.1, 0.5]
    ep = Episode(request=scored_request(ids, scores, ["6", "7"]), ground_truth="3", user="u",
                 teacher_order=("2", "4", "1", "5", "3"))  # fmt: skip
    alone, fused = prepare(ep, builder), prepare(ep, builder, fusion_alpha=2.0)
    assert alone.bias is None
    np.testing.assert_allclose(fused.bias.numpy(), fusion_bias(scores, 2.0), rtol=1e-6)
    with torch.no_grad():
        lp_alone, lp_fused = batch_step_logprobs(backend.model, hybrid, [alone, fused])
    for t in range(len(ids) - 1):
        live = [c for c in range(len(ids)) if c not in alone.order[:t]]
        want = fuse_step(lp_alone[t, live].double().numpy(), fused.bias.numpy()[live])
        np.testing.assert_allclose(lp_fused[t, live].double().numpy(), want, atol=1e-5)


def test_fused_training_needs_a_score_on_every_candidate(tiny_model_dir) -> None:
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    ep = Episode(request=scored_request(["1", "2", "3"], [0.1, None, 0.3], []), ground_truth="1")
    with pytest.raises(ValueError, match="needs a score on every candidate"):
        prepare(ep, StyledTokenizer(backend.tokenizer, hybrid.style), fusion_alpha=1.0)


def close_calls(n: int, seed: int) -> list[Episode]:
    """`quality_episodes` (the truth has the largest first vector coordinate) with scores
    that rank the truth second, a hair below a negative: a close call fusion leaves to the
    LM, which only the vectors settle."""
    out = []
    for ep in quality_episodes(n, seed):
        score = {c: float(k) for k, c in enumerate(ep.teacher_order)}  # the truth's: 5
        score[ep.ground_truth], score[ep.teacher_order[-2]] = 4.0, 4.02
        cands = tuple(replace(c, score=score[c.id]) for c in ep.request.candidates)
        out.append(replace(ep, request=replace(ep.request, candidates=cands)))
    return out


@pytest.mark.parametrize(("trajectory", "reward"), [("teacher", "step"), ("served", "rr")])
def test_a_fused_run_learns_the_close_calls(tiny_model_dir, tmp_path, trajectory, reward) -> None:
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    cfg = SupervisedConfig(supervised_steps=0, rl_steps=40, batch_size=8, lr=3e-2, warmup_steps=5,
                           eval_every=10_000, checkpoint_every=100, fusion_alpha=3.0,
                           trajectory=trajectory, reward=reward)  # fmt: skip
    trainer = SupervisedTrainer(backend.model, hybrid, close_calls(200, 1), close_calls(40, 2),
                                cfg, tmp_path)  # fmt: skip
    before = trainer.validate()
    trainer.run(resume=False)
    after = trainer.validate()
    # the score alone puts the truth second (MRR 0.5); an LM that reads the vectors, first
    assert before["val_mrr_first_step"] < 0.8 and after["val_mrr_first_step"] > 0.9
    assert before["val_mrr_served"] < 0.8 and after["val_mrr_served"] > 0.9
    # the served validation is what the exported model gives when the engine serves it
    from ranking.engine import load_ranker
    from ranking.metrics import reciprocal_rank

    served = load_ranker(trainer.export(tmp_path / "model"), device="cpu", fusion_alpha=3.0)
    val = close_calls(40, 2)
    results = served.rank_batch([e.request for e in val])
    mrr = np.mean(
        [reciprocal_rank(r.order, e.ground_truth) for r, e in zip(results, val, strict=True)]
    )
    assert after["val_mrr_served"] == pytest.approx(mrr, abs=1.5 / len(val))


def test_on_path_targets_are_the_teachers_choice_among_those_left() -> None:
    p = Prepared(seq=None, order=(1, 2, 0, 3), gt=3)  # the teacher: 1, 2, 0, the truth last
    # served: 2 first, then the truth, then 1: the teacher would take 1, 1, then 1 of {0, 1}
    moved = on_path(p, [2, 3, 1, 0])
    assert moved.order == (2, 3, 1, 0) and moved.targets == (1, 1, 1)
    assert on_path(p, [1, 2, 0, 3]).targets == (1, 2, 0) == p.step_targets()
    with pytest.raises(ValueError, match="not a permutation of the episode's candidates"):
        on_path(p, [1, 2, 2, 3])


def test_served_trajectory_batches_follow_the_engines_ranking(tiny_model_dir, tmp_path) -> None:
    """trajectory="served": each drawn episode is forced along the elimination order the
    engine serves with the weights being trained (the reverse of its ranking), not the
    teacher's; its targets never eliminate the truth."""
    backend, hybrid = fresh_hybrid(tiny_model_dir, seed=5)
    cfg = SupervisedConfig(supervised_steps=0, rl_steps=4, batch_size=6, eval_every=10_000,
                           fusion_alpha=0.5, trajectory="served")  # fmt: skip
    train = close_calls(30, 1)
    trainer = SupervisedTrainer(backend.model, hybrid, train, close_calls(5, 2), cfg, tmp_path)
    batch = trainer._batch(0)
    drawn = [train[i] for i in trainer.drawn(0)]
    served = Ranker(backend, fusion_alpha=0.5).rank_batch([e.request for e in drawn])
    teacher_paths = 0
    for p, result in zip(batch, served, strict=True):
        assert [p.seq.ids[c] for c in p.order] == result.order[::-1]
        assert p.gt not in p.targets and len(p.targets) == len(p.order) - 1
        teacher_paths += p.order[-1] == p.gt
    assert teacher_paths < len(batch)  # an untrained LM loses the truth somewhere
    with pytest.raises(ValueError, match="trajectory 'sampled': use one of teacher, served"):
        SupervisedConfig(trajectory="sampled")
    with pytest.raises(ValueError, match="reward 'ndcg': use one of step, rr"):
        SupervisedConfig(reward="ndcg")


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    data = tiny_ml100k(tmp_path_factory.mktemp("residual") / "movielens-100k", users=30)
    opts = HybridTrainOptions(task="rec-movie", residual_alpha=10, residual_positions=3)
    return build_residual_episodes("rec-movie", data.parent, opts), data


def test_residual_episodes_are_the_training_users_last_items_scored_honestly(residual) -> None:
    from recsys.eval.tasks import HELDOUT_FRACTION, build_task, user_fold

    episodes, data = residual
    taskset = build_task("rec-movie", data, 7)
    log = dict(taskset.train.group_by("user_id").agg("item_id").iter_rows())
    assert episodes.train and episodes.info["residual_alpha"] == 10
    for ep in [*episodes.train, *episodes.val]:
        user, t = ep.user, int(ep.request.request_id.rsplit(":", 1)[1])
        assert user_fold(user, 7) >= HELDOUT_FRACTION  # no held-out user
        assert t >= len(log[user]) - 3 and log[user][t] == ep.ground_truth  # the last 3 items
        assert all(c.score is not None for c in ep.request.candidates)
        assert not set(ep.request.ids) - {ep.ground_truth} & set(log[user])  # unseen negatives
        by_score = sorted(ep.request.candidates, key=lambda c: c.score)
        assert ep.teacher_order == (*[c.id for c in by_score if c.id != ep.ground_truth],
                                    ep.ground_truth)  # fmt: skip
    assert len(episodes.vectors) == len(episodes.item_ids)


def test_residual_episodes_reuse_a_cached_signal(residual, tmp_path, monkeypatch) -> None:
    from recsys.eval.ltr import LambdaMARTBaseline

    fits = []
    original = LambdaMARTBaseline.fit_groups
    monkeypatch.setattr(LambdaMARTBaseline, "fit_groups",
                        lambda self, ts: fits.append(1) or original(self, ts))  # fmt: skip
    episodes, data = residual
    opts = HybridTrainOptions(task="rec-movie", residual_alpha=10, residual_positions=3,
                              fit_cache_dir=tmp_path / "fitted")  # fmt: skip
    built = [build_residual_episodes("rec-movie", data.parent, opts) for _ in range(2)]
    assert len(fits) == 1 and len(list((tmp_path / "fitted").iterdir())) == 1
    for b in built:  # the loaded signal scores every episode as the fitted one
        assert [[c.score for c in e.request.candidates] for e in b.train] == [
            [c.score for c in e.request.candidates] for e in episodes.train
        ]


def test_aligned_recovers_a_rotation_and_keeps_every_inner_product() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(40, 5))
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert np.allclose(aligned(source, source @ rotation), source @ rotation, atol=1e-5)
    # fewer rows than an affine map has parameters: a rotation still cannot copy the target
    unrelated = rng.normal(size=(4, 5))
    out = aligned(source[:4], unrelated)
    assert np.allclose(out @ out.T, source[:4] @ source[:4].T, atol=1e-4)
    assert not np.allclose(out, unrelated, atol=0.1)


@pytest.fixture(scope="module")
def honest(residual):
    _, data = residual
    opts = HybridTrainOptions(task="rec-movie", residual_alpha=10, residual_positions=3,
                              honest_vectors=True)  # fmt: skip
    return build_residual_episodes("rec-movie", data.parent, opts), data


def test_honest_vectors_come_from_the_truncated_fit_in_the_served_coordinates(
    residual, honest
) -> None:
    """Same episodes; the served table unchanged; the training table the truncated fit's
    geometry (its inner products) in the served coordinates."""
    plain, _ = residual
    episodes, data = honest
    assert [e.request for e in episodes.train] == [e.request for e in plain.train]
    assert np.array_equal(episodes.vectors, plain.vectors) and plain.train_vectors is None
    assert episodes.train_vectors.shape == episodes.vectors.shape
    assert not np.allclose(episodes.train_vectors, episodes.vectors)
    assert episodes.info["honest_vectors"]["r2"] < 1.0
    from recsys.eval.ltr import fit_feature_models
    from recsys.eval.tasks import HELDOUT_FRACTION, build_task, user_fold
    from recsys.hybrid_training import cf_vectors

    taskset = build_task("rec-movie", data, 7)
    train_users = taskset.train["user_id"].unique()
    scored = {u for u in train_users if user_fold(str(u), 7) >= HELDOUT_FRACTION}
    own = cf_vectors(fit_feature_models(truncated(taskset.train, scored, 3), taskset, 7))
    got = episodes.train_vectors
    assert np.allclose(got @ got.T, own @ own.T, atol=1e-2 * np.abs(own @ own.T).max())


def test_an_honest_run_trains_on_its_vectors_and_exports_the_served_ones(
    honest, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """The trainer ranks the episodes with the honest table; the model folder serves with the
    whole log's (training itself and the export's adapter are stubbed: the vectors are the
    point)."""
    episodes, data = honest
    seen = {}

    def run(self, resume=False):
        seen["vectors"] = self.hybrid.vectors.cpu().numpy().copy()

    monkeypatch.setattr(SupervisedTrainer, "run", run)
    monkeypatch.setattr(
        SupervisedTrainer,
        "export",
        lambda self, out, extra=None: self.hybrid.save(out, extra=extra),
    )
    opts = HybridTrainOptions(task="rec-movie", out=tmp_path / "m", base=str(tiny_model_dir),
                              supervised_steps=0, rl_steps=1, residual_alpha=10, inject_layer=1,
                              honest_vectors=True)  # fmt: skip
    (tmp_path / "m.work").mkdir()
    (tmp_path / "m.work" / "log.jsonl").write_text('{"episodes_per_s": 1.0}\n')
    train_hybrid(opts, data.parent, echo=lambda _: None, episodes=lambda *a: episodes)
    assert np.array_equal(seen["vectors"], episodes.train_vectors)
    assert np.array_equal(np.load(tmp_path / "m" / "vectors.npy"), episodes.vectors)


def test_train_hybrid_with_a_residual_weight_needs_the_residual_builder(tmp_path) -> None:
    opts = HybridTrainOptions(task="rec-movie", out=tmp_path / "m", residual_alpha=10)
    with pytest.raises(UserError, match=r"pass episodes=recsys\.hybrid_residual"):
        train_hybrid(opts, tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--honest-vectors"], "--honest-vectors applies to --residual-alpha runs"),
        (["--residual-alpha", "-1"], "--residual-alpha -1.0: use a weight in [0, 1000]"),
        (["--residual-alpha", "1e9"], "use a weight in [0, 1000]"),
        (["--residual-positions", "0"], "--residual-positions 0: use 1 to 1000"),
        (["--ce-weight", "-0.5"], "--ce-weight -0.5: use a weight in [0, 100]"),
        (["--trajectory", "sampled"], "--trajectory 'sampled': use one of teacher, served"),
        (["--reward", "ndcg"], "--reward 'ndcg': use one of step, rr"),
        (["--hard-negatives", "20"], "--hard-negatives 20: use 0 to 19"),
        (["--hard-negatives", "-1"], "--hard-negatives -1: use 0 to 19"),
    ],
)
def test_train_ranker_refuses_bad_residual_options(args, message, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, ["train-ranker", "--task", "rec-movie", *args])
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(hard_negatives=25), "--hard-negatives 25: use 0 to 19"),
        (dict(vectors="bpr"), "--vectors 'bpr': use one of lightfm, lightfm+text"),
        (dict(reward="ndcg"), "--reward 'ndcg': use one of step, rr"),
        (dict(honest_vectors=True), "--honest-vectors applies to --residual-alpha runs"),
    ],
)
def test_train_options_are_checked_for_library_callers_too(options, message) -> None:
    """The same checks as the CLI's (it builds these options before anything else)."""
    with pytest.raises(UserError, match=re.escape(message)):
        HybridTrainOptions(task="rec-movie", **options)


def test_training_plot_of_a_served_validation_log_and_a_folder_without_one(tmp_path) -> None:
    from recsys.hybrid_training import plot_logs

    work = tmp_path / "run.work"
    work.mkdir()
    rows = [{"step": s, "stage": "rl", "ce": 1.0 / (s + 1), "batch": 8} for s in range(60)]
    rows[29] |= {"val_mrr_first_step": 0.7, "val_mrr_served": 0.6}
    rows[59] |= {"val_mrr_first_step": 0.8, "val_mrr_served": 0.65}
    (work / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_logs([work], tmp_path / "curves.png", references={"control served": 0.7})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no training log"):
        plot_logs([tmp_path], tmp_path / "x.png")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("0.77", "--reference '0.77': use NAME=MRR, e.g. 'control served=0.7752'"),
        ("control=high", "--reference 'control=high': use NAME=MRR"),
        ("control=7.5", "--reference 'control=7.5': an MRR is in [0, 1]"),
    ],
)
def test_training_plot_refuses_bad_references(reference, message, monkeypatch, capsys) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, ["train-ranker-plot", ".", "--reference", reference]
    )
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize("hard", [0, 4, 12, 19])
def test_an_episode_draws_its_hard_negatives_from_the_users_cf_top(hard) -> None:
    """`--hard-negatives N`: N of the 19 negatives from the hard pool, the rest from
    elsewhere in the unseen pool; the truth is among the 20 candidates once."""
    from recsys.hybrid_training import _episode

    class Teacher:  # the ensemble's scores: any order will do here
        def ensemble(self, user, history, ids):
            return np.arange(len(ids), dtype=float)

    items = [f"h{k}" for k in range(8)]
    pool = np.array([f"i{k}" for k in range(200)])
    hard_pool = pool[:30]
    titles = {i: i for i in [*items, *pool]}
    opts = HybridTrainOptions(task="rec-movie", hard_negatives=hard)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return _episode("rec-movie", "u", items, 7, pool, hard_pool, rng, Teacher(), titles, opts)

    ep = draw(0)
    ids = [c.id for c in ep.request.candidates]
    negatives = [i for i in ids if i != ep.ground_truth]
    hard_set = set(hard_pool)
    assert ep.ground_truth == "h7" and ids.count("h7") == 1 and len(set(ids)) == 20
    # at least N from the hard pool (the uniform rest may land there too)
    assert sum(i in hard_set for i in negatives) >= hard
    # ... and the rest uniform: with N = 0 the 30 hard items are no likelier than the others
    if hard == 0:
        draws = [c.id for seed in range(200) for c in draw(seed).request.candidates]
        draws = [d for d in draws if d != "h7"]
        share = np.mean([d in hard_set for d in draws])
        assert abs(share - 30 / 200) < 0.03


def test_export_only_writes_the_model_the_run_exported(tiny_model_dir, tmp_path) -> None:
    """A run's own export and `--export-only` of its last checkpoint are the same model:
    identical weights, vectors and rankings (a shipped folder must rank as evaluated)."""
    from safetensors.torch import load_file

    from ranking.loading import load_backend

    data = tiny_ml100k(tmp_path / "movielens-100k", users=30)
    opts = HybridTrainOptions(task="rec-movie", out=tmp_path / "m", base=str(tiny_model_dir),
                              supervised_steps=2, rl_steps=2, batch_size=2, inject_layer=1,
                              device="cpu")  # fmt: skip
    train_hybrid(opts, data.parent, echo=lambda _: None)
    first = tmp_path / "first"
    (tmp_path / "m").rename(first)
    train_hybrid(replace(opts, export_only=True), data.parent, echo=lambda _: None)
    second = tmp_path / "m"
    adapter = "adapter/adapter_model.safetensors"
    a, b = load_file(str(first / adapter)), load_file(str(second / adapter))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa = torch.load(first / "projector.pt", weights_only=True)
    pb = torch.load(second / "projector.pt", weights_only=True)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert np.array_equal(np.load(first / "vectors.npy"), np.load(second / "vectors.npy"))
    items = json.loads((first / "hybrid.json").read_text())["items"][:8]
    request = RankRequest(task="rec-movie", history=(), candidates=tuple(
        Candidate(id=i, text=i) for i in items))  # fmt: skip
    ranked = [Ranker(load_backend(str(f), device="cpu", cache=False)).rank(request)
              for f in (first, second)]  # fmt: skip
    assert ranked[0].order == ranked[1].order
    assert ranked[0].log_propensity == pytest.approx(ranked[1].log_propensity, abs=0)
