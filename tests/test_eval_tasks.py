"""Task builders: rec protocol, passage-k, passage-rerank, router; determinism; loaders."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from recsys.datasets import Dataset
from recsys.errors import UserError
from recsys.eval import tasks
from tests.fixtures.data import SHARED_DATA, require_data

ITEMS = [str(i) for i in range(100)]


def rec_dataset(rows: list[tuple[str, str, int]]) -> Dataset:
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "rating": [None] * len(rows),
            "timestamp": [r[2] for r in rows],
        },
        schema={"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64,
                "timestamp": pl.Int64},
    )  # fmt: skip
    items = pl.DataFrame({"item_id": ITEMS, "title": [f"Movie {i}" for i in ITEMS]})
    return Dataset(inter, items, "synthetic")


def synthetic_rec() -> Dataset:
    rows = []
    # user a: items 0..24 at times 100..124, written in reverse file order
    rows += [("a", str(i), 100 + i) for i in reversed(range(25))]
    # user b: 21 items; the last two share a timestamp (file order: 60 then 30)
    rows += [("b", str(40 + i), i) for i in range(19)] + [("b", "60", 50), ("b", "30", 50)]
    # user c: only 20 interactions -> skipped
    rows += [("c", str(i), i) for i in range(20)]
    return rec_dataset(rows)


def test_rec_protocol_target_history_negatives() -> None:
    built = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=3)
    assert built.skipped == {"fewer than 21 interactions": 1}
    by_user = {i.user_id: i for i in built.instances}
    assert set(by_user) == {"a", "b"}
    a = by_user["a"]
    assert a.target == "24"  # the last interaction in time, not in the file
    assert a.history_ids == tuple(str(i) for i in range(4, 24))  # the 20 before, oldest first
    assert a.history[0] == "Movie 4"
    assert len(a.candidates) == 20 and len(set(a.ids)) == 20
    negatives = set(a.ids) - {"24"}
    assert not negatives & {str(i) for i in range(25)}  # never interacted with
    assert a.request_task == "rec-movie" and a.relevance == {"24": 1.0}
    assert by_user["b"].target == "30"  # equal timestamps: file order decides
    tie = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=3, tie_break="item-id")
    assert {i.user_id: i.target for i in tie.instances}["b"] == "60"


def test_rec_candidates_are_shuffled_and_seeded() -> None:
    first = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=1)
    again = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=1)
    other = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=2)
    assert first.instances == again.instances
    assert [i.ids for i in first.instances] != [i.ids for i in other.instances]
    positions = {i.ids.index(i.target) for s in range(10) for i in
                 tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=s).instances}  # fmt: skip
    assert len(positions) > 3  # the target is not always in the same place


def test_rec_train_drops_only_the_target_rows() -> None:
    data = rec_dataset([("u", str(i), i) for i in range(21)] + [("v", "5", 1)])
    built = tasks.build_rec_tasks(data, "rec-movie", seed=0)
    train = built.train
    assert train is not None
    assert train.height == 21  # 22 rows minus u's target
    assert "20" not in train.filter(pl.col("user_id") == "u")["item_id"].to_list()
    assert train.filter(pl.col("user_id") == "v")["item_id"].to_list() == ["5"]


def test_task_files_are_byte_identical_for_a_seed(tmp_path: Path) -> None:
    paths = []
    for n, seed in enumerate((5, 5, 6)):
        built = tasks.build_rec_tasks(synthetic_rec(), "rec-movie", seed=seed)
        paths.append(tmp_path / f"{n}.jsonl")
        tasks.write_task_file(built, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    back = tasks.read_task_file(paths[0])
    assert back.instances == tasks.build_rec_tasks(synthetic_rec(), "rec-movie", 5).instances


def test_limited_is_a_seeded_subset() -> None:
    data = rec_dataset([(f"u{u}", str(i), i) for u in range(30) for i in range(21)])
    built = tasks.build_rec_tasks(data, "rec-movie", seed=0)
    sub = built.limited(7, seed=1)
    assert len(sub.instances) == 7
    assert {i.id for i in sub.instances} <= {i.id for i in built.instances}
    assert sub.instances == built.limited(7, seed=1).instances
    assert sub.info["limit"] == 7 and sub.info["of"] == 30
    with pytest.raises(UserError, match="--limit must be >= 1"):
        built.limited(0, seed=1)


# ---------------------------------------------------------------- passages


def trec_files(folder: Path) -> Path:
    """Two queries: q1 with grades 3,2 and five grade-0 hits; q2 without a relevant hit."""
    grades = {"d1": 3, "d2": 0, "d3": 2, "d4": 0, "d5": 0, "d6": 0, "d7": 0, "d8": 1}
    hits = [{"qid": 1, "docid": d, "rank": r + 1, "score": 10.0 - r, "content": f"text {d}"}
            for r, d in enumerate(grades)]  # fmt: skip
    hits2 = [{"qid": 2, "docid": "e1", "rank": 1, "score": 3.0, "content": "x"}]
    (folder / "bm25").mkdir(parents=True)
    (folder / "qrels").mkdir()
    runs = [{"query": "what is one", "hits": hits}, {"query": "two", "hits": hits2}]
    (folder / "bm25" / "retrieve_results_toy.json").write_text(json.dumps(runs))
    lines = [f"1 Q0 {d} {g}" for d, g in grades.items()] + ["1 Q0 d9 2", "2 Q0 e1 0"]
    (folder / "qrels" / "qrels.toy.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_passage_k_one_relevant_and_k_minus_1_grade_zero(tmp_path: Path) -> None:
    trec_files(tmp_path)
    built = tasks.build_task("passage-5", tmp_path, seed=0)
    assert len(built.instances) == 5  # 5 draws of the one usable query
    assert built.skipped == {"no judged grade>=2 passage": 1, "fewer than 4 grade-0": 0}
    for inst in built.instances:
        assert len(inst.candidates) == 5 and inst.request_task == "passage"
        assert inst.target in {"d1", "d3"} and len(inst.relevance) == 1
        assert set(inst.ids) - {inst.target} <= {"d2", "d4", "d5", "d6", "d7"}
        assert inst.query == "what is one"
    assert {i.target for i in built.instances} == {"d1", "d3"}  # both positives get drawn
    seven = tasks.build_task("passage-7", tmp_path, seed=0)
    assert seven.instances == [] and seven.skipped["fewer than 6 grade-0"] == 1


def test_passage_rerank_keeps_bm25_order_and_graded_truth(tmp_path: Path) -> None:
    trec_files(tmp_path)
    built = tasks.build_task("passage-rerank", tmp_path, seed=0)
    assert built.metric == "ndcg@10"
    q1 = built.instances[0]
    assert q1.ids == ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
    assert q1.relevance["d1"] == 3 and q1.relevance["unretrieved:d9"] == 2
    assert q1.candidates[0].score == 10.0


LOADER_ERRORS = [
    (tasks.load_qrels, "qrels.txt", "1 Q0 d1 high\n", r"qrels\.txt, line 1: column 'grade'"),
    (tasks.load_qrels, "qrels.txt", "1 Q0 d1 1\n1 Q0 d2\n", r"qrels\.txt, line 2: expected 4"),
    (tasks.load_trec_run, "run.txt", "1 Q0 d1 1 x tag\n", r"line 1: column 'score' 'x' is not"),
    (tasks.load_rank_llm_json, "r.json", '[{"query": "q",\n "hits": [}]', r"r\.json, line 2: not"),
    (tasks.load_rank_llm_json, "r.json", '[{"query": "q"}]', r"entry #0 is not"),
    (tasks.load_rank_llm_json, "r.json", "", r"r\.json: the file is empty"),
    (tasks.load_router_queries, "t.json", '[{"q": 1}]', r"expected a JSON list of \{question"),
    (tasks.load_llm_candidates, "l.json", '{"m": {"feature": "x"}}', r"expected \{name"),
]  # fmt: skip


@pytest.mark.parametrize(("loader", "name", "content", "message"), LOADER_ERRORS)
def test_loaders_reject_bad_files(tmp_path: Path, loader, name, content, message) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        loader(path)


def test_trec_run_and_topics_loaders(tmp_path: Path) -> None:
    run = tmp_path / "run.txt"
    run.write_text("7 Q0 b 2 1.5 t\n7 Q0 a 1 2.5 t\n")
    assert tasks.load_trec_run(run) == {"7": [("a", 2.5), ("b", 1.5)]}
    topics = tmp_path / "topics.txt"
    topics.write_bytes(b"1\twhat is x\r\n2\thow to y\r\n")
    assert tasks.load_topics(topics) == {"1": "what is x", "2": "how to y"}


# ---------------------------------------------------------------- router


@pytest.mark.parametrize(
    ("scores", "weights", "expected"),
    [
        ({"a": 1, "b": 1, "c": 0}, (1.0, 0.0), "b"),  # tie on score: cheaper b wins
        ({"a": 1, "b": 0, "c": 0}, (1.0, 0.0), "a"),
        ({"a": 1, "b": 0, "c": 0}, (0.5, 0.5), "c"),  # a: 0.5 - 0.5*1 = 0 ties c: 0 -> cheaper
        ({"a": 0, "b": 1, "c": 0}, (0.5, 0.5), "b"),  # b: 0.5 - 0.25 = 0.25 > c: 0
        ({"a": 1, "b": 0, "c": 0}, (0.2, 0.8), "c"),  # c is cheapest (normalised price 0)
        ({"a": 0, "b": 0, "c": 0}, (1.0, 0.0), None),  # all equal: left out
        ({"a": 0, "b": 0, "c": 0}, (0.5, 0.5), "c"),  # price alone decides
    ],
)
def test_router_target_rule(scores, weights, expected) -> None:
    prices = {"a": 0.9, "b": 0.5, "c": 0.1}  # normalised: a 1, b 0.5, c 0
    assert tasks.router_target(scores, prices, *weights) == expected


def test_router_tasks_count_left_out_queries() -> None:
    llms = {n: tasks.LLM(n, f"{n} model", p) for n, p in (("a", 0.9), ("b", 0.5), ("c", 0.1))}
    rows = [{"question": "q0", "scores": {"a": 1, "b": 0, "c": 0}},
            {"question": "q1", "scores": {"a": 1, "b": 1, "c": 1}}]  # fmt: skip
    perf = tasks.build_router_tasks(rows, llms, "router-perf", seed=0)
    assert [i.target for i in perf.instances] == ["a"]
    assert perf.skipped == {"all LLMs equal under the weighting": 1}
    cost = tasks.build_router_tasks(rows, llms, "router-cost", seed=0)
    assert len(cost.instances) == 2 and cost.info["decided_by_price_alone"] == 1
    assert sorted(cost.instances[0].ids) == ["a", "b", "c"]
    assert cost.instances[0].query == "q0"


def test_unknown_task_and_missing_music_data() -> None:
    with pytest.raises(UserError, match="unknown task 'rec-books'"):
        tasks.expand_tasks(["rec-books"])
    assert tasks.expand_tasks(["all", "rec-movie"]) == list(tasks.TASKS)
    with pytest.raises(UserError, match="rec-music: no data is shipped; pass --data"):
        tasks.build_task("rec-music", None, 0)


# ---------------------------------------------------------------- shipped data (cheap)


def test_shipped_dl19_passage_tasks() -> None:
    built = tasks.build_task("passage-9", require_data(SHARED_DATA / "trec-dl-passage"), seed=7)
    assert len(built.instances) == 36 * 5  # 36 usable DL19 queries (README), 5 draws each
    assert all(len(i.candidates) == 9 for i in built.instances)


def test_shipped_movielens_rec_task_counts(shared_movielens_100k: Path) -> None:
    built = tasks.build_task("rec-movie", shared_movielens_100k, seed=7)
    assert len(built.instances) == 911
    assert built.skipped == {"fewer than 21 interactions": 32}


def test_retrieval_candidates_replace_random_negatives() -> None:
    # 30 users share items 0..20 in order; user "z" has watched 0..19, target 20 is held out
    rows = [(f"u{u}", str(i), i) for u in range(30) for i in range(21)]
    rows += [("z", str(i), i) for i in range(21)]
    built = tasks.build_rec_tasks(rec_dataset(rows), "rec-movie", seed=0)
    swapped = tasks.with_retrieval_candidates(built.limited(3, seed=0), k=5)
    assert len(swapped.instances) == 3
    for inst in swapped.instances:
        assert len(inst.candidates) == 5
        assert all(c.score is not None for c in inst.candidates)
        assert not set(inst.ids) & set(inst.history_ids)  # seen items are not retrieved
        assert inst.relevance == {"20": 1.0}
    assert 0.0 <= swapped.info["target_in_candidates"] <= 1.0
    with pytest.raises(UserError, match="applies to rec tasks"):
        tasks.with_retrieval_candidates(tasks.TaskSet("passage-5", []))
