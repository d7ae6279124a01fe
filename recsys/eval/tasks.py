"""Deterministic evaluation tasks: the paper's nine (Rec-Movie/Music/Game, Router-Perf/
Balance/Cost, Passage-5/7/9) plus TREC DL re-ranking (passage-rerank, passage-rerank-100).

A task is a list of `Instance`s (what to rank, for whom, and the graded truth) plus the
counts of what was left out. The same data and seed give the same instances, and
`write_task_file` writes them byte for byte the same. Protocols (docs/eval.md):

- rec-*: each user's interactions sorted by time (ties: file order); the target is the
  user's last interaction, the 20 before it are the history (oldest first); 19 negatives
  drawn uniformly from catalogue items the user never interacted with; the 20 candidates
  are shuffled. Users with fewer than 21 interactions are skipped and counted. Items are
  shown by title as the data set has it (MovieLens 100K keeps the year: "Heat (1995)").
- passage-k: per DL19 query, k-1 judged non-relevant (grade 0) passages and one grade>=2
  passage, all from the BM25 top-100, drawn `draws` times per query.
- passage-rerank[-100]: the BM25 top-20 [top-100] with graded qrels; measured by nDCG@10.
- router-*: 9 LLMs per query; the truth is argmax w_perf*score - w_cost*normalised price.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ranking.types import Candidate, RankRequest
from recsys import datasets
from recsys.errors import UserError

HISTORY_LEN = 20
N_NEGATIVES = 19
PASSAGE_DRAWS = 5
TIE_BREAKS = ("file", "item-id")
ROUTER_WEIGHTS = {
    "router-perf": (1.0, 0.0),
    "router-balance": (0.5, 0.5),
    "router-cost": (0.2, 0.8),
}


@dataclass(frozen=True)
class Instance:
    """One thing to rank and its truth. `relevance` maps candidate id -> grade (> 0 is
    relevant); single-target tasks have exactly one positive grade."""

    id: str
    task: str  # the evaluation task, e.g. "passage-5"
    request_task: str  # RankRequest.task, e.g. "passage"
    candidates: tuple[Candidate, ...]
    relevance: dict[str, float]
    history: tuple[str, ...] = ()  # titles, oldest first
    history_ids: tuple[str, ...] = ()
    query: str | None = None
    user_id: str | None = None
    group: str | None = None  # e.g. the TREC query id

    @property
    def target(self) -> str:
        """The most relevant candidate (the ground truth of single-target tasks)."""
        return max(self.relevance, key=lambda cid: (self.relevance[cid], cid))

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]

    def to_request(self, mode: str = "incremental", **fields: Any) -> RankRequest:
        return RankRequest(
            task=self.request_task,
            candidates=self.candidates,
            history=self.history,
            history_ids=self.history_ids,
            query=self.query,
            mode=mode,  # type: ignore[arg-type]
            request_id=self.id,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        data = dict(data)
        data["candidates"] = tuple(Candidate(**c) for c in data["candidates"])
        for key in ("history", "history_ids"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


@dataclass
class TaskSet:
    """The instances of one task, what was left out (reason -> count) and how it was built.
    `train` (rec tasks) is every interaction except the evaluated targets, time-ordered,
    for the baselines that learn from data; `train_queries` (router tasks) the training
    queries' utilities (`router_pool`), for the router baselines."""

    name: str
    instances: list[Instance]
    skipped: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    train: pl.DataFrame | None = None
    metric: str = "mrr"  # the headline metric: "mrr" or "ndcg@10"
    catalogue: dict[str, str] | None = None  # rec tasks: item id -> title
    genres: dict[str, str] | None = None  # rec tasks with genres: item id -> "A|B"
    train_queries: pl.DataFrame | None = None  # router tasks: id, question, llm, utility, split

    def limited(self, limit: int | None, seed: int) -> TaskSet:
        """A seeded random subset of `limit` instances (all when limit is None)."""
        if limit is None or limit >= len(self.instances):
            return self
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        pick = np.random.default_rng(seed).permutation(len(self.instances))[:limit]
        chosen = [self.instances[i] for i in sorted(pick)]
        info = {**self.info, "limit": limit, "of": len(self.instances)}
        return dataclasses.replace(self, instances=chosen, info=info)


HELDOUT_FRACTION = 0.35  # share of users kept out of every training run (>= 300 on rec-movie)
USER_SPLITS = ("all", "heldout", "train")


def user_fold(user: str, seed: int) -> float:
    """A user's place in [0, 1), from a seeded hash: the same split as
    `ranking.rl.episodes.split_by_user`, stable as users are added."""
    digest = hashlib.sha256(f"{seed}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(user: str, seed: int, fraction: float = HELDOUT_FRACTION) -> bool:
    return user_fold(user, seed) < fraction


def for_users(taskset: TaskSet, which: str, seed: int) -> TaskSet:
    """The instances of held-out users (never trained on by `recsys train-ranker` with the
    same seed), of the training users, or all."""
    if which not in USER_SPLITS:
        raise UserError(f"--users must be one of {list(USER_SPLITS)}, got {which!r}")
    if which == "all":
        return taskset
    if taskset.train is None:
        raise UserError(f"--users {which} applies to rec tasks (users), not {taskset.name!r}")
    keep = [
        i for i in taskset.instances if is_heldout(str(i.user_id), seed) == (which == "heldout")
    ]
    info = {**taskset.info, "users": which, "heldout_fraction": HELDOUT_FRACTION}
    return dataclasses.replace(taskset, instances=keep, info=info)


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on the seed and one key (a user, a query), so an
    instance does not change when other users or queries are added or removed."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def write_task_file(taskset: TaskSet, path: str | Path) -> None:
    """JSON lines: a header (task, counts, info), then one instance per line."""
    header = {"task": taskset.name, "skipped": taskset.skipped, "info": taskset.info}
    lines = [json.dumps(header, sort_keys=True, ensure_ascii=False)]
    lines += [
        json.dumps(i.to_dict(), sort_keys=True, ensure_ascii=False) for i in taskset.instances
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_task_file(path: str | Path) -> TaskSet:
    rows = [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line]
    if not rows or "task" not in rows[0]:
        raise UserError(f"{path}: not a task file (the first line must be its header)")
    header = rows[0]
    return TaskSet(
        header["task"], [Instance.from_dict(r) for r in rows[1:]], header["skipped"], header["info"]
    )


# ---------------------------------------------------------------- recommendation


def build_rec_tasks(
    data: datasets.Dataset,
    task: str,
    seed: int,
    *,
    history_len: int = HISTORY_LEN,
    n_negatives: int = N_NEGATIVES,
    tie_break: str = "file",
) -> TaskSet:
    """The paper's Rec protocol on one data set (see the module docstring).

    `tie_break` orders interactions with the same timestamp: "file" (file order; MovieLens
    u.data is randomly ordered, so this is an unbiased choice) or "item-id" (ascending
    numeric item id, which makes the highest id the target: it favours rarely rated
    items and lowers popularity-style baselines by ~6 MRR points on ml-100k)."""
    if tie_break not in TIE_BREAKS:
        raise UserError(f"unknown tie break {tie_break!r}; use one of {list(TIE_BREAKS)}")
    titles = data.titles()
    ordered = data.interactions.with_row_index("_order").filter(
        pl.col("item_id").is_in(list(titles))
    )
    if tie_break == "item-id":
        numeric = pl.col("item_id").cast(pl.Int64, strict=False)
        ordered = ordered.sort([numeric, "item_id"]).with_row_index("_rank")
        ordered = ordered.drop("_order").rename({"_rank": "_order"})
    ordered = ordered.sort(["user_id", "timestamp", "_order"])
    unknown = data.interactions.height - ordered.height
    per_user = ordered.group_by("user_id", maintain_order=True).agg("item_id")
    catalogue = np.array(sorted(titles))
    instances, skipped, targets = [], {"fewer than 21 interactions": 0}, []
    for user, items in per_user.iter_rows():
        if len(items) < history_len + 1:
            skipped["fewer than 21 interactions"] += 1
            continue
        target, history = items[-1], items[-history_len - 1 : -1]
        seen = np.isin(catalogue, items)
        pool = catalogue[~seen]
        if len(pool) < n_negatives:
            skipped["too few unseen items for negatives"] = (
                skipped.get("too few unseen items for negatives", 0) + 1
            )
            continue
        rng = rng_for(seed, user)
        negatives = rng.choice(pool, size=n_negatives, replace=False).tolist()
        ids = [target, *negatives]
        order = rng.permutation(len(ids))
        candidates = tuple(Candidate(id=ids[i], text=titles[ids[i]]) for i in order)
        instances.append(
            Instance(
                id=f"{task}:{user}",
                task=task,
                request_task=task,
                candidates=candidates,
                relevance={target: 1.0},
                history=tuple(titles[h] for h in history),
                history_ids=tuple(history),
                user_id=user,
            )
        )
        targets.append((user, target))
    train = _without_targets(ordered, targets)
    info = {
        "data": data.name,
        "seed": seed,
        "users": per_user.height,
        "interactions_unknown_item": unknown,
        "history_len": history_len,
        "negatives": n_negatives,
        "tie_break": tie_break,
    }
    genres = (
        dict(zip(data.items["item_id"], data.items["genres"].fill_null(""), strict=True))
        if "genres" in data.items.columns
        else None
    )
    return TaskSet(task, instances, skipped, info, train, catalogue=titles, genres=genres)


def with_retrieval_candidates(taskset: TaskSet, k: int = 20) -> TaskSet:
    """Replace each rec instance's random negatives by what production shows the ranker:
    the retrieval stage's top-k for the user (retrieval.generator.CandidateGenerator: CF +
    popularity, fused; items seen in training removed), in retrieval order with scores,
    trained on the same data as the baselines (every interaction except the targets).

    The target may be missing from the top-k; the instance then counts as a miss for
    every ranker, and `info["target_in_candidates"]` says how often it was there."""
    if taskset.train is None or taskset.catalogue is None:
        raise UserError(f"--candidates retrieval applies to rec tasks, not {taskset.name!r}")
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    train = taskset.train
    generator = CandidateGenerator.build(
        train["user_id"].to_list(),
        train["item_id"].to_list(),
        train["timestamp"].cast(pl.Float64).to_list(),
        taskset.catalogue,
        config=GeneratorConfig(seed=int(taskset.info.get("seed", 7))),
    )
    instances, found = [], 0
    for inst in taskset.instances:
        retrieved = generator.candidates(inst.user_id or "", k)
        candidates = tuple(
            Candidate(id=str(c.item), text=taskset.catalogue.get(str(c.item), str(c.item)),
                      score=float(c.score))
            for c in retrieved
        )  # fmt: skip
        found += inst.target in {c.id for c in candidates}
        instances.append(dataclasses.replace(inst, candidates=candidates))
    info = {**taskset.info, "candidates": f"retrieval top-{k} (cf + popularity, rrf)",
            "target_in_candidates": found / max(1, len(instances))}  # fmt: skip
    return dataclasses.replace(taskset, instances=instances, info=info)


def _without_targets(ordered: pl.DataFrame, targets: list[tuple[str, str]]) -> pl.DataFrame:
    """Drop each evaluated user's last interaction (the target row itself, not other
    interactions with the same item)."""
    last = ordered.group_by("user_id", maintain_order=True).agg(pl.col("_order").last())
    evaluated = pl.DataFrame(
        {"user_id": [u for u, _ in targets]}, schema={"user_id": pl.String}
    ).join(last, on="user_id")
    return ordered.join(evaluated, on=["user_id", "_order"], how="anti").drop("_order")


# ---------------------------------------------------------------- TREC DL files


@dataclass(frozen=True)
class Hit:
    docid: str
    text: str
    rank: int
    score: float


def _read_json(path: Path) -> Any:
    datasets.read_lines(path)  # missing / empty / not UTF-8 -> a clear error
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None


def load_rank_llm_json(path: str | Path) -> dict[str, tuple[str, list[Hit]]]:
    """rank_llm retrieve_results JSON: [{query, hits: [{qid, docid, rank, score, content}]}]
    -> qid -> (query text, hits in rank order)."""
    path = Path(path)
    rows = _read_json(path)
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


# ---------------------------------------------------------------- router


@dataclass(frozen=True)
class LLM:
    name: str
    text: str
    price: float  # USD per 1M tokens, input + output


def load_llm_candidates(path: str | Path) -> dict[str, LLM]:
    """LLMRouter llm_candidates JSON: {name: {feature, input_price, output_price, size}}."""
    path = Path(path)
    raw = _read_json(path)
    try:
        llms = {}
        for name, spec in raw.items():
            price = float(spec["input_price"]) + float(spec["output_price"])
            text = (
                f"{name} ({spec.get('size', '?')} parameters). {spec['feature']} "
                f"Routing price: ${price:.2f} per million tokens (input + output)."
            )
            llms[name] = LLM(name, text, price)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"{path}: expected {{name: {{feature, input_price, output_price}}}} ({exc!r})"
        ) from None
    return llms


ROUTER_FORMAT = "a JSON list of {question: str, scores: {llm: number}}"
ROUTER_SPLITS = ("train", "test")  # the dcrouter split files (README); any name is read


def load_router_queries(path: str | Path) -> list[dict[str, Any]]:
    """dcrouter JSON list of {question, scores: {llm: float}} (any split's file)."""
    path = Path(path)
    rows = _read_json(path)

    def bad(what: str) -> UserError:
        return UserError(f"{path}: expected {ROUTER_FORMAT} (a dcrouter split file); {what}")

    if isinstance(rows, dict):
        hint = (
            " (an LLM table? pass the queries file)"
            if all(isinstance(v, dict) and "input_price" in v for v in rows.values())
            else ""
        )
        raise bad(f"got a JSON object{hint}")  # fmt: skip
    if not isinstance(rows, list):
        raise bad(f"got a JSON {type(rows).__name__}")
    if not rows:
        raise bad("got an empty list")
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise bad(f"entry #{n} has no string 'question'")
        scores = row.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise bad(f"entry #{n} has no non-empty 'scores' object")
        for llm, score in scores.items():
            if (
                isinstance(score, bool)
                or not isinstance(score, int | float)
                or not np.isfinite(score)
            ):
                raise bad(f"entry #{n}: score of {llm!r} is {score!r}, not a finite number")
    return rows


def router_target(
    scores: dict[str, float], prices: dict[str, float], w_perf: float, w_cost: float
) -> str | None:
    """The best LLM by w_perf*score - w_cost*normalised price, normalised price =
    (price - min) / (max - min) over the candidates. Ties: the cheaper LLM, then the
    higher raw score, then the name (alphabetical). None when all utilities are equal."""
    utility = router_utilities(scores, prices, w_perf, w_cost)
    if len(set(utility.values())) == 1:
        return None
    return min(utility, key=lambda n: (-utility[n], prices[n], -scores[n], n))


def router_utilities(
    scores: dict[str, float], prices: dict[str, float], w_perf: float, w_cost: float
) -> dict[str, float]:
    """llm -> w_perf*score - w_cost*normalised price (rounded to 9 places): the utility
    whose argmax is the router truth."""
    low, high = min(prices.values()), max(prices.values())
    span = (high - low) or 1.0
    return {
        name: round(w_perf * s - w_cost * (prices[name] - low) / span, 9)
        for name, s in scores.items()
    }


def router_pool(
    rows: Sequence[dict[str, Any]], llms: dict[str, LLM], task: str, *, evaluated: bool
) -> pl.DataFrame:
    """Training queries for the router baselines, one row per (query, LLM): `id` (the
    instance id `task:n` when `evaluated`, i.e. the rows are the evaluated file itself,
    else `train:n`), `question`, `llm`, `utility` (the task's weighting, as the truth),
    `split` ("evaluated": a baseline must cross-fit and never use a query's own row;
    "train": a separate split)."""
    w_perf, w_cost = ROUTER_WEIGHTS[task]
    prefix, split = (task, "evaluated") if evaluated else ("train", "train")
    cols: dict[str, list[Any]] = {"id": [], "question": [], "llm": [], "utility": []}
    for n, row in enumerate(rows):
        scores = _priced_scores(row, n, llms)
        utility = router_utilities(scores, {m: llms[m].price for m in scores}, w_perf, w_cost)
        for name in sorted(utility):
            cols["id"].append(f"{prefix}:{n}")
            cols["question"].append(row["question"])
            cols["llm"].append(name)
            cols["utility"].append(utility[name])
    schema = {"id": pl.String, "question": pl.String, "llm": pl.String, "utility": pl.Float64}
    return pl.DataFrame(cols, schema=schema).with_columns(split=pl.lit(split))


def _priced_scores(row: dict[str, Any], n: int, llms: dict[str, LLM]) -> dict[str, float]:
    """Query #n's scores per LLM; every LLM must have a price (the LLM table)."""
    scores = {name: float(s) for name, s in row["scores"].items()}
    missing = sorted(set(scores) - set(llms))
    if missing:
        raise UserError(f"router query #{n}: LLM(s) {missing} have no price/description")
    return scores


def build_router_tasks(
    rows: Sequence[dict[str, Any]],
    llms: dict[str, LLM],
    task: str,
    seed: int,
    *,
    train_rows: Sequence[dict[str, Any]] | None = None,
) -> TaskSet:
    """One instance per query of `rows`; `train_queries` = `router_pool` of `train_rows`
    (a separate split) or, when None, of `rows` themselves (marked for cross-fitting)."""
    w_perf, w_cost = ROUTER_WEIGHTS[task]
    instances, skipped = [], {"all LLMs equal under the weighting": 0}
    price_only = 0
    for n, row in enumerate(rows):
        scores = _priced_scores(row, n, llms)
        target = router_target(scores, {m: llms[m].price for m in scores}, w_perf, w_cost)
        if target is None:
            skipped["all LLMs equal under the weighting"] += 1
            continue
        price_only += len(set(scores.values())) == 1
        names = sorted(scores)
        order = rng_for(seed, f"{task}:{n}").permutation(len(names))
        instances.append(
            Instance(
                id=f"{task}:{n}",
                task=task,
                request_task=task,
                candidates=tuple(Candidate(id=names[i], text=llms[names[i]].text) for i in order),
                relevance={target: 1.0},
                query=row["question"],
            )
        )
    info = {"seed": seed, "weights": [w_perf, w_cost], "queries": len(rows),
            "decided_by_price_alone": price_only}  # fmt: skip
    pool = router_pool(rows if train_rows is None else train_rows, llms, task,
                       evaluated=train_rows is None)  # fmt: skip
    return TaskSet(task, instances, skipped, info, train_queries=pool)


# ---------------------------------------------------------------- the task table

REC_DATA = {
    "rec-movie": "movielens-100k",
    "rec-game": "amazon-video-games",
    "rec-music": None,  # no music data shipped: pass --data (RecBole atomic folder)
}
TASKS = (
    "rec-movie", "rec-music", "rec-game", "router-perf", "router-balance", "router-cost",
    "passage-5", "passage-7", "passage-9",
)  # fmt: skip
EXTRA_TASKS = ("passage-rerank", "passage-rerank-100")
ALL_TASKS = TASKS + EXTRA_TASKS


def default_data(task: str, data_dir: Path) -> Path | None:
    if task in REC_DATA:
        name = REC_DATA[task]
        return data_dir / name if name else None
    if task.startswith("router"):
        return data_dir / "router-llmrouter-dcrouter"
    return data_dir / "trec-dl-passage"


def build_task(task: str, data: Path | None, seed: int, *, tie_break: str = "file") -> TaskSet:
    """Build one task from its data folder (`default_data` unless the user gave one)."""
    if task not in ALL_TASKS:
        raise UserError(f"unknown task {task!r}; use one of {[*ALL_TASKS, 'all']}")
    if data is None:
        raise UserError(
            f"{task}: no data is shipped; pass --data {task}=PATH to a RecBole atomic folder "
            "(<name>.inter + <name>.item; the paper used Amazon CDs & Vinyl)"
        )
    if not data.exists():
        raise UserError(f"{task}: data folder {data} does not exist (set it with --data)")
    if task.startswith("rec"):
        return build_rec_tasks(datasets.read_dataset(data), task, seed, tie_break=tie_break)
    builder = _BUILDERS[task.split("-")[0]]
    return builder(task, data, seed)


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


def _is_llm_table(path: Path) -> bool:
    return path.parent.name == "llm_candidates" or "llm" in path.name


def router_files(data: Path) -> tuple[Path, Path, Path | None]:
    """(queries file to evaluate, LLM table, separate training split or None) for a
    folder laid out like router-llmrouter-dcrouter (dcrouter_preprocessed/<split>.json +
    llm_candidates/*.json) or for one split's file of that format. A folder evaluates
    its train.json (the shipped split), or its only queries file when it has no
    train.json. A file named other than train.json trains the baselines on a train.json
    beside it when there is one."""
    layout = "dcrouter_preprocessed/<split>.json + llm_candidates/*.json"
    if data.is_dir():
        found = sorted(p for p in data.glob("**/*.json") if not _is_llm_table(p))
        named = [p for p in found if p.name == "train.json"]
        if not named and len(found) > 1:
            raise UserError(
                f"{data}: {len(found)} router query files and none named train.json "
                f"({', '.join(str(p.relative_to(data)) for p in found)}); pass one with "
                "--data TASK=FILE"
            )
        if not found:
            raise UserError(
                f"{data}: no router queries file ({ROUTER_FORMAT}); expected {layout} "
                f"(splits: {', '.join(s + '.json' for s in ROUTER_SPLITS)}), or pass "
                "--data TASK=FILE"
            )
        queries = (named or found)[0]
        llms = sorted(data.glob("**/llm_candidates/*.json")) or sorted(
            p for p in data.glob("**/*llm*.json") if p != queries
        )
        where = f"under {data}"
    else:
        queries, bases = data, (data.parent, data.parent.parent)
        llms = [p for b in bases for p in sorted(b.glob("llm_candidates/*.json"))] or [
            p for b in bases for p in sorted(b.glob("*llm*.json")) if p != queries
        ]
        where = "in " + " or ".join(dict.fromkeys(str(b / "llm_candidates") for b in bases))
    if not llms:
        raise UserError(
            f"{data}: no LLM table ({{name: {{feature, input_price, output_price}}}}) "
            f"{where}; expected {layout}"
        )
    train = queries.with_name("train.json")
    return queries, llms[0], train if train != queries and train.is_file() else None


def _router(task: str, data: Path, seed: int) -> TaskSet:
    queries, llms, train = router_files(data)
    return build_router_tasks(
        load_router_queries(queries), load_llm_candidates(llms), task, seed,
        train_rows=None if train is None else load_router_queries(train),
    )  # fmt: skip


_BUILDERS: dict[str, Callable[[str, Path, int], TaskSet]] = {
    "passage": _passage_task,
    "router": _router,
}


def expand_tasks(names: Iterable[str]) -> list[str]:
    """`all` -> the nine tasks; others checked and kept in order, without repeats."""
    out: list[str] = []
    for name in names:
        for task in TASKS if name == "all" else (name,):
            if task not in ALL_TASKS:
                raise UserError(f"unknown task {task!r}; use one of {[*ALL_TASKS, 'all']}")
            if task not in out:
                out.append(task)
    return out
