"""The `next` retrieval source (retrieval.sources.TransitionsSource) in the index, with and
without the LambdaMART stage, on MovieLens 100K, leave-last-out.

    .venv/bin/python -m benchmarks.bench_next_source [--data PATH] [--split test|valid]
        [--recent 5] [--weight 1.0] [--hard-next] [--pools 30,...] [--users N]
        [--out benchmarks/results]

One index is built on the training log with the production defaults (LightFM WARP 64
factors, 30 epochs, seed 7; the MiniLM text profile; popularity; RRF; the LambdaMART stage
with its pool of 50) plus the `next` source at `--weight` over the user's last `--recent`
items. Four candidate lists per user come from it: fusion without `next` (the source left
out of the fusion, exactly the index without it), fusion with it, and each re-ordered by the
LambdaMART stage. Per user: the held-out item's hit in the top 20 (recall@20) and its
reciprocal rank there (MRR@20, 0 when absent); paired bootstrap intervals of with - without
(`recsys.stats.paired_difference`, 2,000 resamples of the users). The plan and the rule
that decides the default: docs/results/next-source/README.md.

--hard-next (plan 2): the index's stage is trained with hard negatives from the `next`
top too (`GeneratorConfig(ltr_hard_next=True)`), and its LambdaMART row compares it, with
the source, against a second index built as today's default (no `next`, today's stage).
--pools (plan 3): one more row per pool, the stage re-ordering that many fused candidates
of the same index, against the configured pool.

Writes benchmarks/results/next_source[_hardnext].json and .md (--split valid:
next_source[_hardnext]_valid.*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.bench_ltr_stage import K, _interval, _rr, run_meta, split_log
from benchmarks.bench_retrieval import DATA, RESULTS

METRICS = ("recall@20", "mrr@20")


def measure(gen, users: list[str], targets: dict[str, str], *, ltr: bool) -> dict:  # type: ignore[no-untyped-def]
    """Per user, the hit and reciprocal rank of the held-out item in the top K."""
    hits, rrs, cpu = [], [], time.process_time()
    for u in users:
        order = [str(c.item) for c in gen.candidates(u, K, ltr=ltr)]
        hits.append(float(targets[u] in order))
        rrs.append(_rr(order, targets[u]))
    ms = 1000 * (time.process_time() - cpu) / len(users)
    return {"recall@20": hits, "mrr@20": rrs, "ms_per_user_cpu": round(ms, 2)}


def compare(with_: dict, without: dict) -> dict:
    """Per metric: both means and the paired difference with - without."""
    from recsys.stats import bootstrap_mean, paired_difference

    row: dict = {}
    for metric in METRICS:
        d = paired_difference(with_[metric], without[metric])
        row[metric] = {
            "without": round(bootstrap_mean(without[metric]).mean, 4),
            "with": round(bootstrap_mean(with_[metric]).mean, 4),
            "diff": {k: round(getattr(d, k), 4) for k in ("mean", "low", "high")},
        }
    row["ms_per_user_cpu"] = {"without": without["ms_per_user_cpu"],
                              "with": with_["ms_per_user_cpu"]}  # fmt: skip
    return row


def run(
    data_dir: Path,
    split: str,
    recent: int,
    weight: float,
    n_users: int | None,
    hard_next: bool,
    pools: list[int],
) -> dict:
    from retrieval.embeddings import TextEmbedder
    from retrieval.generator import DEFAULT_WEIGHTS, CandidateGenerator, GeneratorConfig

    data, log, targets, users = split_log(data_dir, split, n_users)
    weights = {**DEFAULT_WEIGHTS, "next": weight}
    embedder = TextEmbedder()
    config = GeneratorConfig(ltr=True, weights=weights, next_recent=recent, ltr_hard_next=hard_next)
    timings: dict[str, float] = {}
    gen = CandidateGenerator.build(
        *log, data.texts, embedder=embedder, config=config, timings=timings,
        titles=data.titles, genres=data.genres,
    )  # fmt: skip
    default = None
    if hard_next:  # today's default index, for the LambdaMART row
        default = CandidateGenerator.build(
            *log, data.texts, embedder=embedder, config=GeneratorConfig(ltr=True),
            titles=data.titles, genres=data.genres,
        )  # fmt: skip
    source = gen.next_source
    rows = []
    with_next: dict = {}
    for ltr in (False, True):
        gen.next_source = None  # the same index without the source
        without = measure(default if ltr and default else gen, users, targets, ltr=ltr)
        gen.next_source = source
        with_next = measure(gen, users, targets, ltr=ltr)
        name = "fusion -> LambdaMART" if ltr else "fusion"
        if ltr and default is not None:
            name += " (without: today's default index)"
        row = {"index": name, **compare(with_next, without)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    configured = gen.config.ltr_pool
    for pool in pools:  # `with_next` is the configured pool's lists, with the stage
        gen.config.ltr_pool = pool
        row = compare(measure(gen, users, targets, ltr=True), with_next)
        row["index"] = f"fusion -> LambdaMART, pool {pool} (without: pool {configured})"
        rows.append(row)
        print(json.dumps(row), flush=True)
    gen.config.ltr_pool = configured
    return {
        "split": split,
        "users": len(users),
        "items": len(gen.item_ids),
        "next_recent": recent,
        "weight": weight,
        "weights": weights,
        "ltr_hard_next": hard_next,
        "transition_pairs": int(source.counts.nnz) if source is not None else 0,
        "build_seconds": {k: round(v, 2) for k, v in timings.items()},
        "rows": rows,
    }


def markdown(results: dict) -> str:
    r, meta = results["result"], results["meta"]
    lines = [
        f"# The `next` retrieval source (ml-100k, leave-last-out, {r['split']} split)",
        "",
        f"Measured by `{meta['command']}` ({meta['machine']}, {meta['date']}; "
        f"{meta['cpu_seconds']} CPU s, {meta['wall_seconds']} s wall).",
        "",
        f"{r['users']} users, {r['items']} items; top 20 per user, seen items excluded; "
        f"`next` = items within 10 steps after the user's last {r['next_recent']} items, RRF "
        f"weight {r['weight']} beside {r['weights']}; the stage's hard negatives also from the "
        f"`next` top: {r.get('ltr_hard_next', False)}; difference = with - without on the same "
        "users, paired bootstrap 95% interval. Plan and rule: "
        "docs/results/next-source/README.md.",
        "",
        "| index | recall@20 without | with `next` | difference | MRR@20 without | with "
        "| difference | CPU ms/user (without / with) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        rec, mrr, ms = row["recall@20"], row["mrr@20"], row["ms_per_user_cpu"]
        lines.append(
            f"| {row['index']} | {rec['without']} | {rec['with']} | {_interval(rec['diff'])} "
            f"| {mrr['without']} | {mrr['with']} | {_interval(mrr['diff'])} "
            f"| {ms['without']} / {ms['with']} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split", default="test", choices=["test", "valid"])
    parser.add_argument("--recent", type=int, default=5, help="the user's last items it reads")
    parser.add_argument("--weight", type=float, default=1.0, help="its RRF weight")
    parser.add_argument(
        "--hard-next", action="store_true", help="plan 2: the stage trained for the source"
    )
    parser.add_argument(
        "--pools", default="", help="plan 3: the stage's pools to compare, comma-separated"
    )
    parser.add_argument("--users", type=int, default=None, help="a seeded sample (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = " ".join([".venv/bin/python -m benchmarks.bench_next_source", *sys.argv[1:]])
    started, cpu = time.perf_counter(), time.process_time()
    pools = [int(p) for p in args.pools.split(",") if p]
    result = run(args.data, args.split, args.recent, args.weight, args.users, args.hard_next, pools)
    results = {"meta": run_meta(command, started, cpu), "result": result}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "next_source" + ("_hardnext" if args.hard_next else "")
    name += "".join(f"_pool{p}" for p in pools)
    name += "" if args.split == "test" else "_valid"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
