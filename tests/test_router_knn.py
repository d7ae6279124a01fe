"""The knn-router baseline (known answer, no leakage) and the dcrouter loader (any split's
file, clear errors)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ranking.metrics import expected_random_mrr
from recsys.errors import UserError
from recsys.eval import harness, tasks
from recsys.eval.baselines import KNNRouterBaseline
from recsys.eval.rankers import BASELINES, make_baseline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DCROUTER = SHARED / "router-llmrouter-dcrouter"
PRICES = {"coder": 0.3, "poet": 0.3, "cheap": 0.1, "big": 0.9}
LLM_TABLE = {
    name: {"feature": f"{name} model", "input_price": p / 2, "output_price": p / 2, "size": "7B"}
    for name, p in PRICES.items()
}
LLMS = {n: tasks.LLM(n, f"{n} model", p) for n, p in PRICES.items()}
CODE = ["python", "function", "bug", "compile", "loop", "variable", "class", "error"]
POEM = ["poem", "rhyme", "verse", "sonnet", "stanza", "metaphor", "haiku", "lyric"]


def cluster_rows(n: int, offset: int = 0) -> list[dict]:
    """Code questions: only coder is right; poem questions: only poet is right."""
    rows = []
    for i in range(n):
        for words, best in ((CODE, "coder"), (POEM, "poet")):
            picked = [words[(i + offset + j) % len(words)] for j in range(3)]
            question = f"{' '.join(picked)} question {i + offset}"
            rows.append({"question": question,
                         "scores": {m: float(m == best) for m in PRICES}})  # fmt: skip
    return rows


def top_choices(taskset: tasks.TaskSet, k: int = 5) -> dict[str, str]:
    ranker = KNNRouterBaseline(k=k)
    ranker.prepare(taskset)
    results = ranker.rank_instances(taskset.instances)
    return {inst.id: res.order[0] for inst, res in zip(taskset.instances, results, strict=True)}


def test_registered_for_router_tasks_only() -> None:
    assert BASELINES["knn-router"] is KNNRouterBaseline
    assert make_baseline("knn-router").name == "knn-router"
    rec = tasks.TaskSet("rec-movie", [])
    with pytest.raises(UserError, match=r"does not apply to 'rec-movie' \(only to router\*\)"):
        KNNRouterBaseline().prepare(rec)
    with pytest.raises(UserError, match="router-perf: no training queries"):
        KNNRouterBaseline().prepare(tasks.TaskSet("router-perf", []))


@pytest.mark.parametrize("task", ["router-perf", "router-balance"])
def test_separate_split_picks_the_cluster_best(task: str) -> None:
    evaluated = tasks.build_router_tasks(
        cluster_rows(6, offset=3), LLMS, task, seed=0, train_rows=cluster_rows(20)
    )
    assert set(evaluated.train_queries["split"]) == {"train"}
    chosen = top_choices(evaluated)
    assert len(chosen) == 12
    for inst in evaluated.instances:
        expected = "coder" if set(inst.query.split()) & set(CODE) else "poet"
        assert inst.target == expected and chosen[inst.id] == expected
    # harness end to end: every first choice is the target
    run = harness.evaluate(KNNRouterBaseline(k=5), evaluated, progress=False, seed=0)
    assert run.metrics["hit@1"]["mean"] == 1.0


def test_score_is_the_mean_task_utility_of_the_neighbours() -> None:
    # router-cost: utility = 0.2*score - 0.8*(price - 0.1)/0.4; one train query per cluster
    train = [
        {"question": "python bug", "scores": {"coder": 1.0, "poet": 0.0, "cheap": 0.5}},
        {"question": "poem rhyme", "scores": {"coder": 0.0, "poet": 1.0, "cheap": 0.0}},
    ]
    evaluated = tasks.build_router_tasks(
        [{"question": "python bug please", "scores": {"coder": 1, "poet": 0, "cheap": 0}}],
        LLMS, "router-cost", seed=0, train_rows=train,
    )  # fmt: skip
    inst = evaluated.instances[0]
    for k, expected in ((1, {"coder": 0.2 - 0.8, "poet": -0.8, "cheap": 0.1}),
                        (2, {"coder": (0.2 - 0.8 - 0.8) / 2, "poet": (-0.8 + 0.2 - 0.8) / 2,
                             "cheap": 0.05})):  # fmt: skip
        ranker = KNNRouterBaseline(k=k)
        ranker.prepare(evaluated)
        scores = dict(zip(inst.ids, ranker.scores(inst), strict=True))
        assert scores == pytest.approx(expected)


def test_cross_fitting_on_the_evaluated_file_still_finds_the_cluster_best() -> None:
    built = tasks.build_router_tasks(cluster_rows(30), LLMS, "router-perf", seed=0)
    assert set(built.train_queries["split"]) == {"evaluated"}
    chosen = top_choices(built)
    assert all(chosen[i.id] == i.target for i in built.instances)


def test_no_leakage_an_evaluated_query_is_never_its_own_neighbour() -> None:
    # pairs of near-identical questions with opposite answers: with k=1 a query's own row
    # would always be its nearest neighbour (similarity 1) and give its own answer
    rows = []
    for j in range(40):
        rows.append({"question": f"topic{j} alpha", "scores": {"coder": 1.0, "poet": 0.0}})
        rows.append({"question": f"topic{j} beta", "scores": {"coder": 0.0, "poet": 1.0}})
    rows.append(dict(rows[0]))  # an exact copy of a question must not leak either
    llms = {n: LLMS[n] for n in ("coder", "poet")}
    built = tasks.build_router_tasks(rows, llms, "router-perf", seed=0)
    ranker = KNNRouterBaseline(k=1)
    ranker.prepare(built)
    fold = {r["question"]: ranker.fold_of(r["question"], ranker.folds) for r in rows}
    twins_apart = 0
    for n, inst in enumerate(built.instances):
        assert inst.id == f"router-perf:{n}"
        for k in (1, 10, 10_000):
            ranker.k = k
            used = ranker.neighbours(inst)
            assert inst.id not in used
            questions = set(
                built.train_queries.filter(built.train_queries["id"].is_in(used))["question"]
            )
            assert inst.query not in questions
            assert all(fold[q] != fold[inst.query] for q in questions)
        ranker.k = 1
        twin = rows[n ^ 1]["question"] if n < 80 else None
        if twin is not None and fold[twin] != fold[inst.query]:
            twins_apart += 1  # its nearest row is the twin, whose answer is the opposite
            assert ranker.rank_instances([inst])[0].order[0] != inst.target
    assert twins_apart > 40


def test_separate_split_uses_every_training_query() -> None:
    built = tasks.build_router_tasks(
        cluster_rows(2, offset=5), LLMS, "router-perf", seed=0, train_rows=cluster_rows(4)
    )
    ranker = KNNRouterBaseline(k=1000)
    ranker.prepare(built)
    used = ranker.neighbours(built.instances[0])
    assert sorted(used) == sorted(f"train:{n}" for n in range(8))


# ---------------------------------------------------------------- the loader


def write(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def dcrouter_folder(root: Path, splits: dict[str, list[dict]]) -> Path:
    for name, rows in splits.items():
        write(root / "dcrouter_preprocessed" / f"{name}.json", rows)
    write(root / "llm_candidates" / "default_llm.json", LLM_TABLE)
    return root


def test_folder_evaluates_train_json_by_default_and_any_split_as_a_file(tmp_path: Path) -> None:
    root = dcrouter_folder(tmp_path / "d", {"train": cluster_rows(4), "test": cluster_rows(2, 9)})
    default = tasks.build_task("router-perf", root, seed=7)
    assert default.info["queries"] == 8 and set(default.train_queries["split"]) == {"evaluated"}
    test = tasks.build_task("router-perf", root / "dcrouter_preprocessed" / "test.json", seed=7)
    assert test.info["queries"] == 4
    assert (
        set(test.train_queries["split"]) == {"train"} and test.train_queries["id"].n_unique() == 8
    )
    train = tasks.build_task("router-perf", root / "dcrouter_preprocessed" / "train.json", seed=7)
    assert [i.to_dict() for i in train.instances] == [i.to_dict() for i in default.instances]
    # a folder holding only one split (any name) evaluates it, cross-fitted
    only = dcrouter_folder(tmp_path / "o", {"valid": cluster_rows(3)})
    built = tasks.build_task("router-cost", only, seed=7)
    assert built.info["queries"] == 6 and set(built.train_queries["split"]) == {"evaluated"}
    # a file elsewhere with the LLM table beside it
    flat = write(tmp_path / "flat" / "my_queries.json", cluster_rows(2))
    write(tmp_path / "flat" / "llm_candidates" / "prices.json", LLM_TABLE)
    assert tasks.build_task("router-balance", flat, seed=7).info["queries"] == 4


def _folder_without_llm_table(tmp: Path) -> Path:
    write(tmp / "q" / "dcrouter_preprocessed" / "test.json", cluster_rows(1))
    return tmp / "q"


def _two_splits_no_train(tmp: Path) -> Path:
    return dcrouter_folder(tmp / "q", {"test": cluster_rows(1), "valid": cluster_rows(1)})


def _queries_file(content: object):
    def make(tmp: Path) -> Path:
        dcrouter_folder(tmp / "q", {})
        return write(tmp / "q" / "dcrouter_preprocessed" / "test.json", content)

    return make


def _llm_table_as_queries(tmp: Path) -> Path:
    return dcrouter_folder(tmp / "q", {}) / "llm_candidates" / "default_llm.json"


LOADER_ERRORS = [
    (lambda tmp: write(tmp / "empty" / "x.txt", "hi").parent,
     r"no router queries file \(a JSON list of \{question: str, scores: \{llm: number\}\}\); "
     r"expected dcrouter_preprocessed/<split>\.json \+ llm_candidates/\*\.json \(splits: "
     r"train\.json, test\.json\), or pass --data TASK=FILE"),
    (_two_splits_no_train,
     r"2 router query files and none named train\.json \(dcrouter_preprocessed/test\.json, "
     r"dcrouter_preprocessed/valid\.json\); pass one with --data TASK=FILE"),
    (_folder_without_llm_table, r"q: no LLM table \(\{name: \{feature, input_price, "
     r"output_price\}\}\) under .*/q; expected dcrouter_preprocessed"),
    (lambda tmp: write(tmp / "lonely.json", cluster_rows(1)),
     r"lonely\.json: no LLM table .* in /.*/llm_candidates or /.*/llm_candidates; expected"),
    (_queries_file('[{"question": "q",\n "scores": }]'), r"test\.json, line 2: not valid JSON"),
    (_queries_file(""), r"test\.json: the file is empty"),
    (_queries_file([]), r"test\.json: expected a JSON list of \{question: str, scores: "
     r"\{llm: number\}\} \(a dcrouter split file\); got an empty list"),
    (_queries_file("3"), r"expected a JSON list of .*; got a JSON int"),
    (_queries_file([{"q": 1}]), r"entry #0 has no string 'question'"),
    (_queries_file([{"question": "q", "scores": {"coder": 1}}, {"question": "r"}]),
     r"entry #1 has no non-empty 'scores' object"),
    (_queries_file([{"question": "q", "scores": {}}]), r"entry #0 has no non-empty 'scores'"),
    (_queries_file([{"question": "q", "scores": {"coder": "1"}}]),
     r"entry #0: score of 'coder' is '1', not a finite number"),
    (_queries_file([{"question": "q", "scores": {"coder": None}}]),
     r"entry #0: score of 'coder' is None, not a finite number"),
    (_queries_file([{"question": "q", "scores": {"gpt-9": 1.0}}]),
     r"router query #0: LLM\(s\) \['gpt-9'\] have no price/description"),
    (_llm_table_as_queries, r"default_llm\.json: expected a JSON list of .*; got a JSON "
     r"object \(an LLM table\? pass the queries file\)"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), LOADER_ERRORS)
def test_loader_rejects_bad_input_with_a_clear_message(tmp_path: Path, make, message) -> None:
    with pytest.raises(UserError, match=message):
        tasks.build_task("router-perf", make(tmp_path), seed=7)


def test_nan_score_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", '[{"question": "q", "scores": {"coder": NaN}}]')
    with pytest.raises(UserError, match="score of 'coder' is nan, not a finite number"):
        tasks.load_router_queries(path)


# ---------------------------------------------------------------- shipped data


@pytest.mark.skipif(
    not DCROUTER.exists() and os.environ.get("CI") != "true",
    reason="router-llmrouter-dcrouter not at ../shared/data (under CI=true the test fails)",
)
def test_shipped_dcrouter_knn_router_beats_random() -> None:
    built = tasks.build_task("router-perf", DCROUTER, seed=7)
    assert len(built.instances) == 4386 and built.train_queries.height == 5608 * 9
    subset = built.limited(400, seed=7)
    run = harness.evaluate(KNNRouterBaseline(), subset, progress=False, seed=7)
    assert run.metrics["mrr"]["low"] > expected_random_mrr(9)  # 31.43
