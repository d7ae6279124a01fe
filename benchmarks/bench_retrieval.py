"""Retrieval benchmark: quality on ml-100k, FAISS index speed/recall, CF training time.

    .venv/bin/python -m benchmarks.bench_retrieval [--sections quality,faiss,cf|none]
        [--sizes 100000,1000000] [--dims 64,384] [--distributions clustered,iid]
        [--kinds hnsw,ivfpq] [--hnsw-m 16,32] [--sweep-m-up-to N] [--ef-search ...]
        [--nprobe ...] [--ivf-train-per-list N] [--threads 1] [--plot docs/retrieval_faiss.png]

Writes benchmarks/results/retrieval.json and benchmarks/results/retrieval.md (tables, also
copied into docs/retrieval.md by hand). Sections not asked for keep their earlier results;
FAISS results are kept per block (distribution, n, dim) and each block records its command.

- quality: leave-last-out on MovieLens 100K (each user's last interaction held out, seen
  items excluded), recall@20/50/100 of CF (LightFM WARP, 64 factors, 30 epochs, seed 7), the
  MiniLM text profile (mean of the last 10 items' title+genre embeddings), popularity, and
  their fusion (RRF with the default weights, and variants).
- faiss: flat vs HNSW (efSearch sweep per M) vs IVF-PQ (nprobe sweep) on synthetic unit
  vectors, `clustered` (a mixture of 1,000 Gaussians) or `iid` (i.i.d. Gaussian coordinates,
  no structure: the worst case for any ANN index). Per block: recall@100 against flat, and
  queries per CPU-second of one FAISS thread, for single queries (one `search` call each,
  the online case) and for one batch of all queries. Sweeps stop once recall >= 0.999 or the
  index is slower than flat in both modes.
- cf: LightFM WARP training time on ml-100k and on a synthetic set of exactly
  --cf-interactions distinct (user, item) pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.fusion import fuse

try:  # `python -m benchmarks.bench_retrieval` (the repo root on sys.path) or the script
    from benchmarks.retrieval_report import markdown, plot
except ModuleNotFoundError:
    from retrieval_report import markdown, plot  # type: ignore[no-redef]

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


def movielens(data_dir: Path):  # type: ignore[no-untyped-def]
    """MovieLens 100K as `recsys.pipeline.Interactions`, in time order (ties: file order)."""
    from recsys.datasets import read_movielens
    from recsys.pipeline import Interactions, item_text

    ds = read_movielens(data_dir)
    frame = ds.interactions.with_row_index("row").sort(["timestamp", "row"])
    items = ds.items
    titles = dict(zip(items["item_id"], items["title"], strict=True))
    genres = dict(zip(items["item_id"], items["genres"], strict=True))
    texts = {i: item_text(t, None, {"genres": genres[i]}) for i, t in titles.items()}
    return Interactions(
        frame["user_id"].to_list(),
        frame["item_id"].to_list(),
        frame["timestamp"].to_numpy().astype(np.float64),
        titles,
        texts,
        {i: g for i, g in genres.items() if g},
    )


def quality(data_dir: Path, embeddings: str) -> dict:
    from recsys.pipeline import leave_last_out
    from retrieval.embeddings import HashingEncoder, TextEmbedder
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    data = movielens(data_dir)
    texts = data.texts
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
    """Unit vectors from a mixture of `clusters` Gaussians (centres N(0, I), spread 0.35)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)]
    x += 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def iid(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors with i.i.d. Gaussian coordinates: no structure, the worst case for ANN."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


DISTRIBUTIONS = {"clustered": clustered, "iid": iid}
ENOUGH_RECALL = 0.999  # a sweep stops here: deeper search only costs speed


@dataclass(frozen=True)
class FaissConfig:
    n_queries: int = 1000  # batch mode: all queries in one search call; recall over these
    single_queries: int = 200  # single mode: the first ones, one search call each
    k: int = 100
    threads: int = 1
    kinds: tuple[str, ...] = ("hnsw", "ivfpq")  # flat always runs: it is the reference
    hnsw_m: tuple[int, ...] = (16, 32)
    ef_search: tuple[int, ...] = (100, 128, 160, 200, 256, 384, 512, 768, 1024)
    ef_construction: int | None = None  # None: the library default
    nprobe: tuple[int, ...] = (8, 16, 32, 64, 128)
    ivf_train_per_list: int | None = None  # None: the library default
    repeats: int = 3  # best of this many timings, stopping early past `timing_budget_s`
    timing_budget_s: float = 10.0
    sweep_m_up_to: int | None = None  # larger catalogues build only the library's default M


def faiss_section(
    sizes: list[int], dims: list[int], distributions: list[str], cfg: FaissConfig, command: str
) -> Iterator[list[dict]]:
    """Flat vs HNSW (efSearch sweep per M) vs IVF-PQ (nprobe sweep), one block per
    (distribution, n, dim), yielded as it finishes: same vectors, queries and thread count
    for every index of a block, batch and single-query timing."""
    import faiss

    faiss.omp_set_num_threads(cfg.threads)
    for dist in distributions:
        for n in sizes:
            for dim in dims:
                both = DISTRIBUTIONS[dist](n + cfg.n_queries, dim, seed=n + dim)
                block = {
                    "distribution": dist,
                    "n": n,
                    "dim": dim,
                    "command": command,
                    "date": time.strftime("%Y-%m-%d", time.gmtime()),
                    "threads": cfg.threads,
                    "queries": cfg.n_queries,
                    "single_queries": cfg.single_queries,
                    "k": cfg.k,
                    "timing": "cpu",  # q/s per CPU-second of the one search thread
                    "load_avg_start": round(os.getloadavg()[0], 2),
                }
                rows = _faiss_block(both[:n], both[n:], block, cfg)
                del both
                for row in rows:
                    row["load_avg_end"] = round(os.getloadavg()[0], 2)
                yield rows


def _faiss_block(x: np.ndarray, q: np.ndarray, block: dict, cfg: FaissConfig) -> list[dict]:
    from retrieval.index import VectorIndex, choose_params

    n, dim = x.shape
    flat_index, flat_build = _build(VectorIndex, x, choose_params(n, dim, kind="flat"))
    flat, truth = _measure(flat_index, q, None, cfg)
    flat["batch_qps_blas"] = _flat_batch_qps_blas(flat_index, q, cfg)
    del flat_index
    rows = [_row(block, "flat", {}, flat_build, flat, flat)]
    m_values = cfg.hnsw_m
    if cfg.sweep_m_up_to is not None and n > cfg.sweep_m_up_to:
        m_values = (choose_params(n, dim, kind="hnsw").hnsw_m,)
    for m in m_values if "hnsw" in cfg.kinds else ():
        params = choose_params(n, dim, kind="hnsw", hnsw_m=m, ef_construction=cfg.ef_construction)
        index, build_s = _build(VectorIndex, x, params)
        for ef in cfg.ef_search:
            index.tune(ef_search=ef)
            shown = {"hnsw_m": m, "ef_construction": params.ef_construction, "ef_search": ef}
            rows.append(
                _row(block, "hnsw", shown, build_s, _measure(index, q, truth, cfg)[0], flat)
            )
            if _sweep_done(rows[-1]):
                break
        del index
    if "ivfpq" in cfg.kinds:
        params = choose_params(n, dim, kind="ivfpq", train_per_list=cfg.ivf_train_per_list)
        index, build_s = _build(VectorIndex, x, params)
        for nprobe in cfg.nprobe:
            index.tune(nprobe=nprobe)
            shown = {
                "nlist": max(1, min(params.nlist, n // 39)),  # as VectorIndex.build clamps it
                "pq_m": params.pq_m,
                "pq_bits": params.pq_bits,
                "train_per_list": params.train_per_list,
                "refine_factor": params.refine_factor,
                "nprobe": nprobe,
            }
            rows.append(
                _row(block, "ivfpq", shown, build_s, _measure(index, q, truth, cfg)[0], flat)
            )
            if _sweep_done(rows[-1]):
                break
        del index
    return rows


def _build(cls, x: np.ndarray, params) -> tuple:  # type: ignore[no-untyped-def]
    """The index, and its build time as (wall s, CPU s)."""
    started, cpu = time.perf_counter(), time.process_time()
    index = cls.build(x, params)
    return index, (time.perf_counter() - started, time.process_time() - cpu)


def _best_time(fn, cfg: FaissConfig) -> float:  # type: ignore[no-untyped-def]
    """Best CPU time of up to `repeats` calls. Process CPU time, not wall time: with one
    FAISS thread it is the time the search computed, whatever else shares the cores."""
    best, spent = float("inf"), 0.0
    for _ in range(cfg.repeats):
        started = time.process_time()
        fn()
        took = time.process_time() - started
        best, spent = min(best, took), spent + took
        if spent > cfg.timing_budget_s:
            break
    return best


def _flat_batch_qps_blas(index, q: np.ndarray, cfg: FaissConfig) -> float:  # type: ignore[no-untyped-def]
    """Flat batch speed with FAISS's BLAS kernel forced. FAISS multiplies with BLAS only
    when queries x dim >= faiss.cvar.distance_compute_blas_threshold (128,000 in 1.15),
    so 1,000 queries at 64-d take its per-query loop; the ANN batch speed-ups are taken
    against the faster of the two exact kernels."""
    import faiss

    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        return len(q) / _best_time(lambda: index.search(q, cfg.k), cfg)
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


def _measure(
    index,  # type: ignore[no-untyped-def]
    q: np.ndarray,
    truth: np.ndarray | None,
    cfg: FaissConfig,
) -> tuple[dict, np.ndarray]:
    """Recall against `truth` (None: this index is the truth) and batch / single q/s."""
    k = cfg.k
    started = time.process_time()
    pos = index.search(q, k)[1]
    batch_s = time.process_time() - started  # the first pass counts as one repetition
    if batch_s < cfg.timing_budget_s:
        batch_s = min(batch_s, _best_time(lambda: index.search(q, k), cfg))
    truth = pos if truth is None else truth
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(pos, truth, strict=True)]))
    singles = q[: cfg.single_queries]

    def one_at_a_time() -> None:
        for row in singles:
            index.search(row[None, :], k)

    single_s = _best_time(one_at_a_time, cfg)
    measured = {
        "recall": recall,
        "batch_qps": len(q) / batch_s,
        "single_qps": len(singles) / single_s,
    }
    return measured, truth


def _row(
    block: dict, kind: str, params: dict, build: tuple[float, float], m: dict, flat: dict
) -> dict:
    row = {
        **{key: block[key] for key in ("distribution", "n", "dim")},
        "kind": kind,
        "params": params,
        "build_s": round(build[0], 2),
        "build_cpu_s": round(build[1], 2),
        f"recall@{block['k']}": round(m["recall"], 4),
        "single_qps": round(m["single_qps"], 1),
        "single_speedup": round(m["single_qps"] / flat["single_qps"], 2),
        "batch_qps": round(m["batch_qps"], 1),
        "batch_speedup": round(m["batch_qps"] / _exact_batch_qps(flat), 2),
        **({"batch_qps_blas": round(m["batch_qps_blas"], 1)} if "batch_qps_blas" in m else {}),
        **{key: v for key, v in block.items() if key not in ("distribution", "n", "dim")},
    }
    print(json.dumps({key: v for key, v in row.items() if key != "command"}), flush=True)
    return row


def _exact_batch_qps(flat: dict) -> float:
    return max(flat["batch_qps"], flat.get("batch_qps_blas", 0.0))


def _sweep_done(row: dict) -> bool:
    """Deeper search is pointless once recall is ~exact or ANN is slower than flat."""
    recall = row[f"recall@{row['k']}"]
    return recall >= ENOUGH_RECALL or max(row["single_speedup"], row["batch_speedup"]) < 1.0


def cf_section(data_dir: Path, synthetic_interactions: int, synthetic_epochs: int) -> list:
    from recsys.datasets import read_movielens
    from retrieval.cf import interactions_matrix

    rows = []
    ds = read_movielens(data_dir)
    users = ds.interactions["user_id"].cast(int).to_numpy() - 1
    items = ds.interactions["item_id"].cast(int).to_numpy() - 1
    m = interactions_matrix(users, items, users.max() + 1, items.max() + 1)
    rows.append(_time_cf("ml-100k", m, epochs=30))
    u, i = synthetic_interactions_pairs(synthetic_interactions, 50_000, 20_000)
    m = interactions_matrix(u, i, 50_000, 20_000)
    rows.append(_time_cf(f"synthetic {synthetic_interactions:,}", m, epochs=synthetic_epochs))
    return rows


def synthetic_interactions_pairs(
    count: int, n_users: int, n_items: int, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct (user, item) pairs: uniform users, power-law item popularity
    (p ~ rank^-0.8, like real catalogues); duplicates are redrawn so the set has exactly
    `count` interactions."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    keys = np.zeros(0, np.int64)
    while len(keys) < count:
        draw = int(1.05 * (count - len(keys))) + 1000
        new = rng.integers(0, n_users, draw) * n_items + rng.choice(n_items, draw, p=p)
        keys = np.concatenate([keys, new[np.sort(np.unique(new, return_index=True)[1])]])
        keys = keys[np.sort(np.unique(keys, return_index=True)[1])]
    keys = keys[:count]
    return keys // n_items, keys % n_items


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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        default="quality,faiss,cf",
        help="comma-separated; 'none' only re-renders the markdown and plot",
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embeddings", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--sizes", default="100000", help="FAISS catalogue sizes, comma-separated")
    parser.add_argument("--dims", default="64,384")
    parser.add_argument(
        "--distributions",
        default="clustered,iid",
        help=f"synthetic vectors: {','.join(DISTRIBUTIONS)}",
    )
    parser.add_argument("--queries", type=int, default=FaissConfig.n_queries)
    parser.add_argument("--single-queries", type=int, default=FaissConfig.single_queries)
    parser.add_argument(
        "--threads",
        type=int,
        default=FaissConfig.threads,
        help="FAISS OpenMP threads for build and search",
    )
    parser.add_argument("--kinds", default="hnsw,ivfpq", help="indexes besides flat")
    parser.add_argument("--hnsw-m", default="16,32")
    parser.add_argument(
        "--sweep-m-up-to",
        type=int,
        default=None,
        help="build every --hnsw-m only up to this size; larger ones get the default M",
    )
    parser.add_argument("--ef-search", default=",".join(map(str, FaissConfig.ef_search)))
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=None,
        help="HNSW build depth (default: the library's)",
    )
    parser.add_argument("--nprobe", default=",".join(map(str, FaissConfig.nprobe)))
    parser.add_argument(
        "--ivf-train-per-list",
        type=int,
        default=None,
        help="IVF-PQ k-means sample per list (default: the library's)",
    )
    parser.add_argument("--cf-interactions", type=int, default=1_000_000)
    parser.add_argument("--cf-epochs", type=int, default=10, help="epochs for the synthetic set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=None, help="write the FAISS plot here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sections = args.sections.split(",")
    command = " ".join([".venv/bin/python -m benchmarks.bench_retrieval", *sys.argv[1:]])
    out_json = args.out / "retrieval.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    if "meta" not in results:  # results written before per-section records
        old = {
            "command": ".venv/bin/python -m benchmarks.bench_retrieval",
            "machine": results.pop("machine", "?"),
            "date": results.pop("date", "?"),
        }
        results["meta"] = {s: dict(old) for s in ("quality", "faiss", "cf") if s in results}
    here = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_json.write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "retrieval.md").write_text(markdown(results))

    if "quality" in sections:
        results["quality"] = quality(args.data, args.embeddings)
        results["meta"]["quality"] = here
        save()
    if "faiss" in sections:
        cfg = FaissConfig(
            n_queries=args.queries,
            single_queries=args.single_queries,
            threads=args.threads,
            kinds=tuple(args.kinds.split(",")),
            hnsw_m=_ints(args.hnsw_m),
            ef_search=_ints(args.ef_search),
            ef_construction=args.ef_construction,
            nprobe=_ints(args.nprobe),
            sweep_m_up_to=args.sweep_m_up_to,
            ivf_train_per_list=args.ivf_train_per_list,
        )
        sizes, dims = list(_ints(args.sizes)), list(_ints(args.dims))
        distributions = args.distributions.split(",")
        results["faiss"] = [r for r in results.get("faiss", []) if "distribution" in r]
        results["meta"].pop("faiss", None)  # recorded per block
        for new in faiss_section(sizes, dims, distributions, cfg, command):
            key = (new[0]["distribution"], new[0]["n"], new[0]["dim"])
            kept = [r for r in results["faiss"] if (r["distribution"], r["n"], r["dim"]) != key]
            results["faiss"] = kept + new  # other blocks (sizes, earlier commands) stay
            save()
    if "cf" in sections:
        results["cf"] = cf_section(args.data, args.cf_interactions, args.cf_epochs)
        results["meta"]["cf"] = here
        save()
    save()
    if args.plot and results.get("faiss"):
        plot(results["faiss"], args.plot)
    print(markdown(results))


if __name__ == "__main__":
    main()
