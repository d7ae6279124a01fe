"""The LambdaMART stage in the retrieval index (GeneratorConfig(ltr=True)) vs fusion alone,
on MovieLens 100K, leave-last-out.

    .venv/bin/python -m benchmarks.bench_ltr_stage [--data PATH] [--embeddings minilm|hashing]
        [--pools 20,50,100] [--users N] [--variants 19:half:50[:text][:bag5],...]
        [--split test|valid]
        [--out benchmarks/results]

Each user's last interaction is held out (`recsys.pipeline.leave_last_out`); two generators
are built on the rest with the production defaults (LightFM WARP 64 factors, 30 epochs,
seed 7; the MiniLM text profile; popularity; RRF): one without the stage, one with it (the
stage fits on the same training log only, its own protocol holding out each user's last
*training* item). Per user (all of them, or a seeded sample of --users): the held-out item's
hit in the top 20 (recall@20) and its reciprocal rank within the top 20 (MRR@20, 0 when
absent), for fusion alone and for the stage re-ranking the top `ltr_pool` fused candidates
(one row per --pools value), with paired bootstrap intervals of the difference
(`recsys.stats.paired_difference`, 2,000 resamples of the users).

Writes benchmarks/results/ltr_stage.json and ltr_stage.md (--split valid:
ltr_stage_valid.json / .md), keeping earlier runs of other commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_retrieval import DATA, RESULTS, movielens

K = 20


def _rr(order: list[str], target: str) -> float:
    return 1.0 / (order.index(target) + 1) if target in order else 0.0


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def variant(text: str) -> dict:
    """ "negatives:hard:depth[:text][:bagN]" (hard "half": negatives // 2 + 1; ":text": the
    stage's title-embedding features too; ":bagN": N LightGBM fits averaged) ->
    GeneratorConfig fields."""
    negatives, hard, depth, *rest = text.split(":")
    bags = [int(r[3:]) for r in rest if r.startswith("bag")]
    unknown = [r for r in rest if r != "text" and not r.startswith("bag")]
    if unknown or len(bags) > 1:
        raise SystemExit(f"variant {text!r}: after negatives:hard:depth only :text and :bagN")
    return {
        "ltr_negatives": int(negatives),
        "ltr_hard": None if hard == "half" else int(hard),
        "ltr_hard_depth": int(depth),
        "ltr_text": "text" in rest,
        "ltr_bag": bags[0] if bags else 1,
    }


def run_meta(command: str, started: float, cpu: float) -> dict:
    """What a results file says of its run: the command, machine, date, wall and CPU
    seconds since `started` (perf_counter) / `cpu` (process_time)."""
    return {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }


def split_log(data_dir: Path, split: str, n_users: int | None = None) -> tuple:
    """(the data set, the training log as (users, items, timestamps), user -> held-out item,
    the measured users): leave-last-out on ml-100k; `split` "valid" drops each user's last
    item first and holds out the one before it. `n_users`: a seeded sample of the users."""
    from recsys.pipeline import Interactions, leave_last_out

    data = movielens(data_dir)
    train, targets = leave_last_out(data)
    if split == "valid":  # each user's last item dropped; the target is the one before it
        data = Interactions(
            [data.users[r] for r in train],
            [data.items[r] for r in train],
            data.timestamps[train],
            data.titles,
            data.texts,
            data.genres,
        )
        train, targets = leave_last_out(data)
    users = sorted(targets, key=int)
    if n_users is not None and n_users < len(users):
        rng = np.random.default_rng(7)
        users = sorted(rng.choice(users, size=n_users, replace=False).tolist(), key=int)
    log = ([data.users[r] for r in train], [data.items[r] for r in train], data.timestamps[train])
    return data, log, targets, users


def run(
    data_dir: Path,
    embeddings: str,
    pools: list[int],
    n_users: int | None,
    variants: list[str],
    split: str,
) -> dict:
    from recsys.stats import bootstrap_mean, paired_difference
    from retrieval.embeddings import HashingEncoder, TextEmbedder
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    data, log, targets, users = split_log(data_dir, split, n_users)
    embedder = TextEmbedder(HashingEncoder(64) if embeddings == "hashing" else None)
    plain = CandidateGenerator.build(*log, data.texts, embedder=embedder, config=GeneratorConfig())

    def items(cands) -> list[str]:  # type: ignore[no-untyped-def]
        return [str(c.item) for c in cands]

    def measure(fn) -> tuple[dict[str, list[float]], float]:  # type: ignore[no-untyped-def]
        hits, rrs, cpu = [], [], time.process_time()
        for u in users:
            order = items(fn(u))
            hits.append(float(targets[u] in order))
            rrs.append(_rr(order, targets[u]))
        return {"recall@20": hits, "mrr@20": rrs}, 1000 * (time.process_time() - cpu) / len(users)

    fused, fused_ms = measure(lambda u: plain.candidates(u, K))
    rows, stages = [], []
    for name in variants:
        timings: dict[str, float] = {}
        config = GeneratorConfig(ltr=True, **variant(name))
        gen = CandidateGenerator.build(
            *log,
            data.texts,
            embedder=embedder,
            config=config,
            timings=timings,
            titles=data.titles,
            genres=data.genres,
        )
        assert gen.ltr is not None
        # the stage's index with the stage off gives the plain index's lists exactly
        same = all(
            items(plain.candidates(u, K)) == items(gen.candidates(u, K, ltr=False))
            for u in users[:100]
        )
        for pool in pools:
            gen.config.ltr_pool = pool
            ltr, ltr_ms = measure(lambda u: gen.candidates(u, K))  # noqa: B023
            row: dict = {"variant": name, "ltr_pool": pool, "ms_per_user_cpu": round(ltr_ms, 2)}
            for metric in ("recall@20", "mrr@20"):
                a, b = bootstrap_mean(ltr[metric]), paired_difference(ltr[metric], fused[metric])
                row[metric] = round(a.mean, 4)
                row[f"{metric} diff"] = {
                    "mean": round(b.mean, 4),
                    "low": round(b.low, 4),
                    "high": round(b.high, 4),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            stage_bytes = _size(gen.ltr.save(Path(tmp) / "ltr"))
        stages.append(
            {
                "variant": name,
                **gen.ltr.info,
                "fused_lists_identical_without_stage": same,
                "fit_seconds": round(timings["ltr"], 2),
                "fit_cpu_seconds": round(timings["ltr_cpu"], 2),
                "artifact_mb": round(stage_bytes / 2**20, 2),
                "importance": gen.ltr.ranker.importance(),
            }
        )
    return {
        "split": split,
        "users": len(users),
        "all_users": len(targets),
        "items": len(plain.item_ids),
        "embeddings": "all-MiniLM-L6-v2" if embeddings == "minilm" else "hashing-64",
        "fused": {m: round(float(np.mean(v)), 4) for m, v in fused.items()}
        | {"ms_per_user_cpu": round(fused_ms, 2)},
        "ltr": rows,
        "stages": stages,
    }


def _interval(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def markdown(results: dict) -> str:
    r, meta = results["result"], results["meta"]
    held = (
        "each user's last item"
        if r["split"] == "test"
        else "each user's second-to-last item (validation: the last one dropped)"
    )
    lines = [
        f"# LambdaMART stage vs fusion alone (ml-100k, leave-last-out, {r['split']} split)",
        "",
        f"Measured by `{meta['command']}` ({meta['machine']}, {meta['date']}; "
        f"{meta['cpu_seconds']} CPU s, {meta['wall_seconds']} s wall).",
        "",
        f"Held out: {held}. {r['users']} users ({r['all_users']} with a held-out item), "
        f"{r['items']} items, text = {r['embeddings']}; top 20 per user, seen items excluded; "
        "MRR@20 = 1/rank within the top 20 (0 when absent); difference = stage - fusion on the "
        "same users, paired bootstrap 95% interval (2,000 resamples). Variant = training "
        "negatives : of which hard (from the user's inner CF top-depth) : depth.",
        "",
        "| candidates | variant | ltr_pool | recall@20 | MRR@20 | recall@20 diff | MRR@20 diff "
        "| CPU ms/user |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| fusion (RRF cf + text + popular) | - | - | {r['fused']['recall@20']} | "
        f"{r['fused']['mrr@20']} | - | - | {r['fused']['ms_per_user_cpu']} |",
    ]
    for row in r["ltr"]:
        lines.append(
            f"| fusion -> LambdaMART | {row['variant']} | {row['ltr_pool']} | {row['recall@20']} "
            f"| {row['mrr@20']} | {_interval(row['recall@20 diff'])} "
            f"| {_interval(row['mrr@20 diff'])} | {row['ms_per_user_cpu']} |"
        )
    lines.append("")
    for s in r["stages"]:
        top = sorted(s["importance"].items(), key=lambda kv: -kv[1])[:5]
        lines.append(
            f"- stage {s['variant']}: {s['queries']} training queries ({s['rows']} rows), fitted "
            f"in {s['fit_cpu_seconds']} CPU s ({s['fit_seconds']} s wall), {s['artifact_mb']} MB "
            f"in the index artifact; fused lists with the stage off equal the plain index's: "
            f"{s['fused_lists_identical_without_stage']}; top features (gain share): "
            + ", ".join(f"{n} {v}" for n, v in top)
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    from retrieval.generator import GeneratorConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embeddings", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--pools", default="20,50,100", help="ltr_pool values, comma-separated")
    parser.add_argument("--users", type=int, default=None, help="a seeded sample (default all)")
    parser.add_argument(
        "--variants",
        default=None,
        help="stage training variants negatives:hard:depth[:text][:bagN] (hard 'half' = n//2+1), "
        "comma-separated; default: GeneratorConfig's",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "valid"],
        help="valid: drop each user's last item, hold out the one before (for choosing)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = " ".join([".venv/bin/python -m benchmarks.bench_ltr_stage", *sys.argv[1:]])
    started, cpu = time.perf_counter(), time.process_time()
    pools = [int(p) for p in args.pools.split(",") if p]
    if args.variants is None:
        d = GeneratorConfig()
        hard = "half" if d.ltr_hard is None else d.ltr_hard
        args.variants = f"{d.ltr_negatives}:{hard}:{d.ltr_hard_depth}"
    result = run(
        args.data, args.embeddings, pools, args.users, args.variants.split(","), args.split
    )
    results = {"meta": run_meta(command, started, cpu), "result": result}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "ltr_stage" if args.split == "test" else "ltr_stage_valid"
    out_json = args.out / f"{name}.json"
    # earlier runs stay, one per command (a re-run of a command replaces its run)
    runs = json.loads(out_json.read_text())["runs"] if out_json.exists() else []
    runs = [r for r in runs if r["meta"]["command"] != command] + [results]
    out_json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text("\n".join(markdown(r) for r in runs))
    print(markdown(results))


if __name__ == "__main__":
    main()
