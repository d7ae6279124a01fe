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

The families live beside this module (instances, task_rec, task_passage, task_router);
this one is the task table, and every public family name is importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from recsys import datasets
from recsys.errors import UserError
from recsys.eval.instances import (
    HELDOUT_FRACTION,
    HISTORY_LEN,
    N_NEGATIVES,
    PASSAGE_DRAWS,
    ROUTER_WEIGHTS,
    TIE_BREAKS,
    USER_SPLITS,
    Instance,
    TaskSet,
    for_users,
    is_heldout,
    read_task_file,
    rng_for,
    user_fold,
    write_task_file,
)
from recsys.eval.task_passage import (
    Hit,
    _passage_files,
    _passage_task,
    build_passage_k,
    build_passage_rerank,
    load_qrels,
    load_rank_llm_json,
    load_topics,
    load_trec_run,
)
from recsys.eval.task_rec import (
    build_rec_tasks,
    with_retrieval_candidates,
)
from recsys.eval.task_router import (
    LLM,
    ROUTER_FORMAT,
    ROUTER_SPLITS,
    _router,
    build_router_tasks,
    load_llm_candidates,
    load_router_queries,
    router_files,
    router_pool,
    router_target,
    router_utilities,
)

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


__all__ = [
    "ALL_TASKS",
    "EXTRA_TASKS",
    "HELDOUT_FRACTION",
    "HISTORY_LEN",
    "LLM",
    "N_NEGATIVES",
    "PASSAGE_DRAWS",
    "REC_DATA",
    "ROUTER_FORMAT",
    "ROUTER_SPLITS",
    "ROUTER_WEIGHTS",
    "TASKS",
    "TIE_BREAKS",
    "USER_SPLITS",
    "Hit",
    "Instance",
    "TaskSet",
    "_passage_files",
    "build_passage_k",
    "build_passage_rerank",
    "build_rec_tasks",
    "build_router_tasks",
    "build_task",
    "default_data",
    "expand_tasks",
    "for_users",
    "is_heldout",
    "load_llm_candidates",
    "load_qrels",
    "load_rank_llm_json",
    "load_router_queries",
    "load_topics",
    "load_trec_run",
    "read_task_file",
    "rng_for",
    "router_files",
    "router_pool",
    "router_target",
    "router_utilities",
    "user_fold",
    "with_retrieval_candidates",
    "write_task_file",
]
