"""Retrieval benchmark: quality on ml-100k, FAISS index speed/recall, CF training time.

    .venv/bin/python -m benchmarks.bench_retrieval [--sections quality,faiss,cf] [--sizes 100000]

Writes benchmarks/results/retrieval.json and benchmarks/results/retrieval.md (tables, also
copied into docs/retrieval.md by hand). Every section is measured in one run of this script.

- quality: leave-last-out on MovieLens 100K (each user's last interaction held out, seen
  items excluded), recall@20/50/100 of CF (LightFM WARP, 64 factors, 30 epochs, seed 7), the
  MiniLM text profile (mean of the last 10 items' title+genre embeddings), popularity, and
  their fusion (RRF with the default weights, and variants).
- faiss: flat vs HNSW vs IVF-PQ on synthetic clustered unit vectors (a mixture of 1,000
  Gaussian clusters, like real embedding catalogues; uniform random vectors have no
  neighbourhood structure and no ANN method does well on them): recall@100 against the flat
  (exact) answer and queries/s for a batch of 1,000 queries.
- cf: LightFM WARP training time on ml-100k and on a 1M-interaction synthetic set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from retrieval.fusion import fuse

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
FUSIONS = {
    "cf": {"cf": 1.0, "text": 0.0, "popular": 0.0},
    "text (MiniLM)": {"cf": 0.0, "text": 1.0, "popular": 0.0},
    "popular": {"cf": 0.0, "text": 0.0, "popular": 1.0},
    "fusion RRF (default weights)": None,
    "fusion RRF cf+text (1 : 0.3)": {"cf": 1.0, "text": 0.3, "popular": 0.0},
    "fusion RRF equal weights": {"cf": 1.0, "text": 1.0, "popular": 1.0},
}
KS = (20, 50, 100)


def quality(data_dir: Path, embeddings: str) -> dict:
    from recsys.datasets import read_movielens
    from recsys.pipeline import Interactions, item_text, leave_last_out
    from retrieval.embeddings import HashingEncoder, TextEmbedder
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    ds = read_movielens(data_dir)
    frame = ds.interactions.with_row_index("row").sort(["timestamp", "row"])
    items = ds.items
    titles = dict(zip(items["item_id"], items["title"], strict=True))
    texts = {
        i: item_text(t, None, {"genres": g})
        for i, t, g in zip(items["item_id"], items["title"], items["genres"], strict=True)
    }
    data = Interactions(
        frame["user_id"].to_list(),
        frame["item_id"].to_list(),
        frame["timestamp"].to_numpy().astype(np.float64),
        titles,
        texts,
    )
    train, targets = leave_last_out(data)
    encoder = HashingEncoder(64) if embeddings == "hashing" else None
    timings: dict[str, float] = {}
    gen = CandidateGenerator.build(
        [data.users[r] for r in train],
        [data.items[r] for r in train],
        data.timestamps[train],
        texts,
        embedder=TextEmbedder(encoder),
        config=GeneratorConfig(),
        progress=True,
        timings=timings,
    )
    default_weights = dict(gen.config.weights)
    hits = {name: dict.fromkeys(KS, 0) for name in FUSIONS}
    started = time.perf_counter()
    for user, target in targets.items():
        u = gen.user_pos[user]
        seen = set(gen.seen[u].indices.tolist())
        sources = gen.source_lists(user, min(len(gen.item_ids), max(KS) + len(seen)))
        target_pos = gen.item_pos[target]
        for name, weights in FUSIONS.items():
            fused = fuse(sources, max(KS), weights=weights or default_weights, exclude=seen)
            order = [c.item for c in fused]
            for k in KS:
                hits[name][k] += target_pos in order[:k]
    retrieve_s = time.perf_counter() - started
    n = len(targets)
    return {
        "users": n,
        "items": len(gen.item_ids),
        "embeddings": "all-MiniLM-L6-v2" if embeddings == "minilm" else "hashing-64",
        "default_weights": default_weights,
        "recall": {name: {f"@{k}": round(h[k] / n, 4) for k in KS} for name, h in hits.items()},
        "build_seconds": {k: round(v, 2) for k, v in timings.items()},
        "retrieval_ms_per_user_all_configs": round(1000 * retrieve_s / n, 2),
    }


def clustered(n: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)]
    x += 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_section(sizes: list[int], dims: list[int], n_queries: int = 1000, k: int = 100) -> list:
    from retrieval.index import VectorIndex, choose_params

    rows = []
    for n in sizes:
        for dim in dims:
            both = clustered(n + n_queries, dim, seed=n + dim)
            x, q = both[:n], both[n:]
            truth = None
            flat_qps = None
            for kind in ("flat", "hnsw", "ivfpq"):
                params = choose_params(n, dim, kind=kind)
                started = time.perf_counter()
                index = VectorIndex.build(x, params)
                build_s = time.perf_counter() - started
                # HNSW: one build, two search depths (efSearch >= k is the floor)
                search_params = [100, 200] if kind == "hnsw" else [None]
                for ef in search_params:
                    if ef is not None:
                        index.tune(ef_search=ef)
                        params = index.params
                    started = time.perf_counter()
                    _, pos = index.search(q, k)
                    search_s = time.perf_counter() - started
                    if truth is None:
                        truth, flat_qps = pos, n_queries / search_s
                    row = _faiss_row(n, dim, params, build_s, search_s, pos, truth, flat_qps, k)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                del index
    return rows


def _faiss_row(n, dim, params, build_s, search_s, pos, truth, flat_qps, k) -> dict:  # type: ignore[no-untyped-def]
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(pos, truth, strict=True)]))
    qps = len(pos) / search_s
    shown = {
        "flat": [],
        "hnsw": ["hnsw_m", "ef_construction", "ef_search"],
        "ivfpq": ["nlist", "pq_m", "pq_bits", "nprobe", "refine_factor"],
    }[params.kind]
    return {
        "n": n,
        "dim": dim,
        "kind": params.kind,
        "params": {key: getattr(params, key) for key in shown},
        "build_s": round(build_s, 2),
        f"recall@{k}": round(recall, 4),
        "qps": round(qps, 1),
        "speedup_vs_flat": round(qps / flat_qps, 2),
    }


def cf_section(data_dir: Path, synthetic_interactions: int, synthetic_epochs: int) -> list:
    from recsys.datasets import read_movielens
    from retrieval.cf import interactions_matrix

    rows = []
    ds = read_movielens(data_dir)
    users = ds.interactions["user_id"].cast(int).to_numpy() - 1
    items = ds.interactions["item_id"].cast(int).to_numpy() - 1
    m = interactions_matrix(users, items, users.max() + 1, items.max() + 1)
    rows.append(_time_cf("ml-100k", m, epochs=30))
    rng = np.random.default_rng(7)
    n_users, n_items = 50_000, 20_000
    # power-law item popularity, like real catalogues
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    u = rng.integers(0, n_users, synthetic_interactions)
    i = rng.choice(n_items, synthetic_interactions, p=p / p.sum())
    m = interactions_matrix(u, i, n_users, n_items)
    rows.append(_time_cf(f"synthetic {synthetic_interactions:,}", m, epochs=synthetic_epochs))
    return rows


def _time_cf(name: str, m, epochs: int) -> dict:  # type: ignore[no-untyped-def]
    from retrieval.cf import CFModel

    started = time.perf_counter()
    cpu = time.process_time()
    CFModel.fit(m, loss="warp", factors=64, epochs=epochs, seed=7, threads=1)
    row = {
        "data": name,
        "users": m.shape[0],
        "items": m.shape[1],
        "interactions": int(m.nnz),
        "epochs": epochs,
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(results: dict) -> str:
    lines = [
        "Measured by `.venv/bin/python -m benchmarks.bench_retrieval` "
        f"({results['machine']}, {results['date']}). The 2 CPU cores were shared with other "
        "work during the run, so absolute times are pessimistic; ratios come from one run.",
        "",
    ]
    if "quality" in results:
        qual = results["quality"]
        lines += [
            f"### Retrieval quality, MovieLens 100K (leave-last-out, {qual['users']} users, "
            f"{qual['items']} items, seen items excluded, text = {qual['embeddings']})",
            "",
            "| source | recall@20 | recall@50 | recall@100 |",
            "| --- | --- | --- | --- |",
        ]
        for name, rec in qual["recall"].items():
            lines.append(f"| {name} | {rec['@20']} | {rec['@50']} | {rec['@100']} |")
        lines += ["", f"Default weights: `{qual['default_weights']}`.", ""]
    if "faiss" in results:
        lines += [
            "### FAISS indexes (synthetic clustered unit vectors, 1,000 queries, k = 100)",
            "",
            "| n | dim | index | params | build s | recall@100 | queries/s | x flat |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in results["faiss"]:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
            lines.append(
                f"| {r['n']:,} | {r['dim']} | {r['kind']} | {params} | {r['build_s']} | "
                f"{r['recall@100']} | {r['qps']:,} | {r['speedup_vs_flat']} |"
            )
        lines.append("")
    if "cf" in results:
        lines += [
            "### CF training (LightFM WARP, 64 factors, 1 thread)",
            "",
            "| data | users | items | interactions | epochs | wall s | CPU s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in results["cf"]:
            lines.append(
                f"| {r['data']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | "
                f"{r['epochs']} | {r['wall_s']} | {r['cpu_s']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="quality,faiss,cf")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embeddings", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--sizes", default="100000", help="FAISS catalogue sizes, comma-separated")
    parser.add_argument("--dims", default="64,384")
    parser.add_argument("--cf-interactions", type=int, default=1_000_000)
    parser.add_argument("--cf-epochs", type=int, default=10, help="epochs for the synthetic set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sections = args.sections.split(",")
    out_json = args.out / "retrieval.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    results |= {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_json.write_text(json.dumps(results, indent=2))
        (args.out / "retrieval.md").write_text(markdown(results))

    if "quality" in sections:
        results["quality"] = quality(args.data, args.embeddings)
        save()
    if "faiss" in sections:
        sizes = [int(s) for s in args.sizes.split(",")]
        results["faiss"] = faiss_section(sizes, [int(d) for d in args.dims.split(",")])
        save()
    if "cf" in sections:
        results["cf"] = cf_section(args.data, args.cf_interactions, args.cf_epochs)
        save()
    print(markdown(results))


if __name__ == "__main__":
    main()
