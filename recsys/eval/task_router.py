"""router-* tasks: pick the LLM for a query by score and price (dcrouter data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ranking.types import Candidate
from recsys.errors import UserError
from recsys.eval.instances import (
    ROUTER_WEIGHTS,
    Instance,
    TaskSet,
    read_json,
    rng_for,
)

# ---------------------------------------------------------------- router


@dataclass(frozen=True)
class LLM:
    name: str
    text: str
    price: float  # USD per 1M tokens, input + output


def load_llm_candidates(path: str | Path) -> dict[str, LLM]:
    """LLMRouter llm_candidates JSON: {name: {feature, input_price, output_price, size}}."""
    path = Path(path)
    raw = read_json(path)
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
    rows = read_json(path)

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
