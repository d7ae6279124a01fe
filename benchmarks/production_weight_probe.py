"""The shipped MovieLens ranker on the production index at several fusion weights: does any
weight make the LM add to the retrieval order it re-ranks? Plan and rule:
docs/results/production-weight/README.md.

    RECSYS_TORCH_THREADS=2 python benchmarks/production_weight_probe.py --split valid|test
        [--model models/committee-rec-movie] [--alphas 2,5,10,20]

Builds the index `recsys batch` builds (fusion with the `next` source -> LambdaMART) on the
split's training log (benchmarks.bench_ltr_stage.split_log), re-ranks each held-out user's
top 20 with the ranker at each weight (`fusion_alpha` on the requests), and writes
benchmarks/results/production_weight_<split>.json / .md: per weight, NDCG@10 and MRR of the
re-ranked lists minus the retrieval order on the same users, with paired 95% intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ltr_stage import run_meta, split_log  # noqa: E402
from benchmarks.bench_retrieval import DATA, RESULTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--model", default="models/committee-rec-movie")
    parser.add_argument("--alphas", default="2,5,10,20")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from recsys.pipeline import paired_gain, rank_requests, retrieve, unseen_by
    from recsys.runtime import load_ranker, served_ranker
    from retrieval.embeddings import TextEmbedder
    from retrieval.generator import CandidateGenerator, GeneratorConfig, source_weights

    command = " ".join(["python benchmarks/production_weight_probe.py", *sys.argv[1:]])
    started, cpu = time.perf_counter(), time.process_time()
    data, log, targets, users = split_log(DATA, args.split)
    config = GeneratorConfig(ltr=True, weights=source_weights(True))
    gen = CandidateGenerator.build(*log, data.texts, embedder=TextEmbedder(), config=config,
                                   titles=data.titles, genres=data.genres)  # fmt: skip
    served = served_ranker(model=args.model)
    retrieved = retrieve(gen, users, 20)
    retrieval = {u: [str(c.item) for c in cands] for u, cands in retrieved.items()}
    heldout = list(unseen_by(served, retrieval))
    candidates = {u: retrieved[u] for u in heldout}
    requests = rank_requests(gen, candidates, data.titles, history=20)
    ranker = load_ranker(served=served, model=args.model)
    rows = []
    for alpha in [float(a) for a in args.alphas.split(",")]:
        batch = [dataclasses.replace(r, fusion_alpha=alpha) for r in requests.values()]
        results = ranker.rank_batch(batch, progress=True)
        orders = {u: list(r.order) for u, r in zip(requests, results, strict=True)}
        gain = paired_gain(orders, retrieval, targets)
        rows.append({"alpha": alpha, **gain})
        print(json.dumps(rows[-1]), flush=True)
    out = {"meta": run_meta(command, started, cpu), "split": args.split, "model": args.model,
           "users": len(heldout), "rows": rows}  # fmt: skip
    name = f"production_weight_{args.split}"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    def cell(d: dict) -> str:
        return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    lines = [
        f"# {out['model']} on the production index, {out['split']} split",
        "",
        f"Measured by `{out['meta']['command']}` ({out['meta']['machine']}, "
        f"{out['meta']['date']}; {out['meta']['wall_seconds']} s wall). {out['users']} users "
        "the ranker never trained on; re-ranked minus the retrieval order (fusion + `next` -> "
        "LambdaMART), paired bootstrap 95% intervals. Plan: "
        "docs/results/production-weight/README.md.",
        "",
        "| fusion weight | NDCG@10 difference | MRR difference |",
        "| --- | --- | --- |",
    ]
    for row in out["rows"]:
        lines.append(f"| {row['alpha']:g} | {cell(row['ndcg@10'])} | {cell(row['mrr'])} |")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
