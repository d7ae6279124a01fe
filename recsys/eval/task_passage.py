"""passage-* tasks: TREC DL passages from rank_llm BM25 runs and qrels (docs/eval.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ranking.types import Candidate
from recsys import datasets
from recsys.errors import UserError
from recsys.eval.instances import (
    PASSAGE_DRAWS,
    Instance,
    TaskSet,
    read_json,
    rng_for,
)

# ---------------------------------------------------------------- TREC DL files


@dataclass(frozen=True)
class Hit:
    docid: str
    text: str
    rank: int
    score: float


def load_rank_llm_json(path: str | Path) -> dict[str, tuple[str, list[Hit]]]:
    """rank_llm retrieve_results JSON: [{query, hits: [{qid, docid, rank, score, content}]}]
    -> qid -> (query text, hits in rank order)."""
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of {{query, hits}} objects")
    out: dict[str, tuple[str, list[Hit]]] = {}
    for n, row in enumerate(rows):
        try:
            hits = [
                Hit(str(h["docid"]), str(h["content"]), int(h["rank"]), float(h["score"]))
                for h in row["hits"]
            ]
            qid = str(row["hits"][0]["qid"]) if row["hits"] else f"#{n}"
            out[qid] = (str(row["query"]), sorted(hits, key=lambda h: h.rank))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{path}: entry #{n} is not {{query, hits: [{{qid, docid, rank, score, "
                f"content}}]}} ({type(exc).__name__}: {exc})"
            ) from None
    return out


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels (`qid Q0 docid grade`) -> qid -> docid -> grade."""
    path = Path(path)
    parts = _whitespace_fields(path, ["qid", "iter", "docid", "grade"])
    parts = datasets.cast_column(parts, path, "grade", pl.Int64)
    out: dict[str, dict[str, int]] = {}
    for qid, docid, grade in parts.select("qid", "docid", "grade").iter_rows():
        out.setdefault(qid, {})[docid] = grade
    return out


def load_trec_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """TREC run (`qid Q0 docid rank score tag`) -> qid -> [(docid, score)] by rank."""
    path = Path(path)
    parts = _whitespace_fields(path, ["qid", "q0", "docid", "rank", "score", "tag"])
    parts = datasets.cast_column(parts, path, "rank", pl.Int64)
    parts = datasets.cast_column(parts, path, "score", pl.Float64)
    out: dict[str, list[tuple[str, float]]] = {}
    for qid, docid, score in (
        parts.sort("qid", "rank", maintain_order=True).select("qid", "docid", "score").iter_rows()
    ):
        out.setdefault(qid, []).append((docid, score))
    return out


def load_topics(path: str | Path) -> dict[str, str]:
    """TREC topics as `qid<TAB>query` lines (CRLF tolerated) -> qid -> query."""
    path = Path(path)
    parts = datasets.split_fields(datasets.read_lines(path), path, "\t", ["qid", "query"])
    return dict(parts.select(pl.col("qid").str.strip_chars(), pl.col("query").str.strip_chars())
                .iter_rows())  # fmt: skip


def _whitespace_fields(path: Path, names: list[str]) -> pl.DataFrame:
    lines = datasets.read_lines(path).with_columns(
        pl.col("raw").str.strip_chars().str.replace_all(r"\s+", " ")
    )
    return datasets.split_fields(lines, path, " ", names)


def build_passage_k(
    queries: dict[str, tuple[str, list[Hit]]],
    qrels: dict[str, dict[str, int]],
    k: int,
    seed: int,
    *,
    draws: int = PASSAGE_DRAWS,
) -> TaskSet:
    """Passage-k: one grade>=2 and k-1 grade-0 passages from each query's BM25 top-100,
    `draws` seeded draws per query (the relevant passage drawn without repeats while
    the query has enough)."""
    task = f"passage-{k}"
    instances, skipped = [], {"no judged grade>=2 passage": 0, f"fewer than {k - 1} grade-0": 0}
    for qid in sorted(queries, key=_qid_key):
        query, hits = queries[qid]
        grades = qrels.get(qid, {})
        relevant = [h for h in hits if grades.get(h.docid, -1) >= 2]
        negative = [h for h in hits if grades.get(h.docid, -1) == 0]
        if not relevant:
            skipped["no judged grade>=2 passage"] += 1
            continue
        if len(negative) < k - 1:
            skipped[f"fewer than {k - 1} grade-0"] += 1
            continue
        rng = rng_for(seed, f"{task}:{qid}")
        positives = rng.permutation(len(relevant))
        for d in range(draws):
            positive = relevant[positives[d % len(relevant)]]
            chosen = [positive, *(negative[i] for i in rng.choice(len(negative), k - 1, False))]
            order = rng.permutation(k)
            instances.append(
                Instance(
                    id=f"{task}:{qid}:{d}",
                    task=task,
                    request_task="passage",
                    candidates=tuple(_passage(chosen[i]) for i in order),
                    relevance={positive.docid: float(grades[positive.docid])},
                    query=query,
                    group=qid,
                )
            )
    info = {"seed": seed, "queries": len(queries), "draws_per_query": draws, "k": k}
    return TaskSet(task, instances, skipped, info)


def build_passage_rerank(
    queries: dict[str, tuple[str, list[Hit]]],
    qrels: dict[str, dict[str, int]],
    depth: int,
) -> TaskSet:
    """Re-rank the BM25 top-`depth` of every judged query; truth = graded qrels (nDCG@10).
    Candidates are given in BM25 order (the usual re-ranking set-up)."""
    task = "passage-rerank" if depth == 20 else f"passage-rerank-{depth}"
    instances, skipped = [], {"no judgments": 0}
    for qid in sorted(queries, key=_qid_key):
        query, hits = queries[qid]
        grades = qrels.get(qid)
        if not grades:
            skipped["no judgments"] += 1
            continue
        top = hits[:depth]
        relevance = {h.docid: float(grades.get(h.docid, 0)) for h in top}
        # the ideal ranking counts every judged passage, not only the retrieved ones
        relevance.update({f"unretrieved:{d}": float(g) for d, g in grades.items()
                          if g > 0 and d not in relevance})  # fmt: skip
        instances.append(
            Instance(
                id=f"{task}:{qid}",
                task=task,
                request_task="passage",
                candidates=tuple(_passage(h) for h in top),
                relevance=relevance,
                query=query,
                group=qid,
            )
        )
    return TaskSet(task, instances, skipped, {"depth": depth, "queries": len(queries)}, None,
                   "ndcg@10")  # fmt: skip


def _passage(hit: Hit) -> Candidate:
    return Candidate(id=hit.docid, text=hit.text, score=hit.score)


def _qid_key(qid: str) -> tuple[int, str]:
    return (int(qid), qid) if qid.isdigit() else (0, qid)


def _passage_files(data: Path) -> tuple[Path, Path]:
    """The rank_llm JSON and qrels in a folder laid out like trec-dl-passage (bm25/, qrels/)
    or holding the two files directly."""
    runs = sorted(data.glob("**/retrieve_results_*.json"))
    qrels = sorted(data.glob("**/qrels*.txt"))
    if len(runs) != 1 or len(qrels) != 1:
        raise UserError(
            f"{data}: expected exactly one retrieve_results_*.json (rank_llm) and one "
            f"qrels*.txt, found {len(runs)} and {len(qrels)}"
        )
    return runs[0], qrels[0]


def _passage_task(task: str, data: Path, seed: int) -> TaskSet:
    run, qrels_path = _passage_files(data)
    queries, qrels = load_rank_llm_json(run), load_qrels(qrels_path)
    if task.startswith("passage-rerank"):
        return build_passage_rerank(queries, qrels, 100 if task.endswith("100") else 20)
    return build_passage_k(queries, qrels, int(task.split("-")[1]), seed)
