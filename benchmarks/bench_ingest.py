"""Ingestion speed and memory: ml-100k and a large synthetic file into SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_ingest.py                 # ml-100k + 5M synthetic rows
    .venv/bin/python benchmarks/bench_ingest.py --rows 1000000  # smaller synthetic file
    .venv/bin/python benchmarks/bench_ingest.py --skip-movielens --rows 1000000,5000000

Each load runs in a fresh child process, so its peak resident memory (ru_maxrss) is its own.
A second load of the same input measures the idempotent path (everything already stored).
Writes benchmarks/results/ingest.json (merged: a run replaces the earlier one of the same
input and backend; each run names its command) and benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
POSTGRES_URL = os.environ.get(
    "RECSYS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def run_one(spec: dict) -> dict:
    """Child process: migrate, load twice, report times, counts and peak memory."""
    from recsys.db.engine import make_engine
    from recsys.db.migrate import upgrade
    from recsys.ingest import ColumnMap, ingest

    upgrade(spec["url"])
    engine = make_engine(spec["url"])
    columns = ColumnMap(**spec.get("columns", {}))
    kwargs = {
        "columns": columns,
        "separator": spec.get("separator", ","),
        "items_path": spec.get("items"),
        "engine": engine,
        "progress": False,
        "chunk_rows": spec.get("chunk_rows", 50_000),
    }
    started = time.perf_counter()
    first = ingest(spec["path"], spec["format"], **kwargs)
    first_s = time.perf_counter() - started
    again_s, again_added = None, None
    if spec.get("reingest", True):
        started = time.perf_counter()
        again_added = ingest(spec["path"], spec["format"], **kwargs).interactions_added
        again_s = round(time.perf_counter() - started, 2)
    engine.dispose()
    return {
        "rows": first.rows_loaded,
        "interactions_added": first.interactions_added,
        "users": first.users_added,
        "items": first.items_added,
        "seconds": round(first_s, 2),
        "rows_per_s": round(first.rows_loaded / first_s),
        "merge_seconds": first.merge_seconds,
        "reingest_seconds": again_s,
        "reingest_added": again_added,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_postgres_schema() -> tuple[str, str]:
    from recsys.db.testing import create_postgres_schema

    return create_postgres_schema(POSTGRES_URL, "bench")


def drop_postgres_schema(schema: str) -> None:
    from recsys.db.testing import drop_postgres_schema as drop

    drop(POSTGRES_URL, schema)


def movielens_spec(workdir: Path) -> dict:
    """ml-100k through `--format movielens` when recsys.datasets exists, else via CSV files
    converted from u.data / u.item (the same rows and titles)."""
    folder = (
        Path(os.environ.get("RECSYS_DATA_DIR", REPO.parent / "shared" / "data")) / "movielens-100k"
    )
    try:
        from recsys import datasets  # noqa: F401

        return {"path": str(folder), "format": "movielens", "via": "--format movielens"}
    except ImportError:
        pass
    ratings = workdir / "ml100k.tsv"
    ratings.write_text(
        "user_id\titem_id\trating\ttimestamp\n" + (folder / "u.data").read_text(encoding="latin-1")
    )
    items = workdir / "ml100k_items.tsv"
    lines = ["item_id\ttitle"]
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        lines.append(f"{fields[0]}\t{fields[1].replace(chr(9), ' ')}")
    items.write_text("\n".join(lines) + "\n")
    return {
        "path": str(ratings),
        "format": "csv",
        "separator": "\t",
        "items": str(items),
        "columns": {"rating": "rating"},
        "via": "--format csv (u.data/u.item converted to TSV)",
    }


def synthetic_csv(path: Path, rows: int, seed: int = 7) -> None:
    """rows interactions: 100k users, 50k items (Zipf-like popularity), 1-5 ratings."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with path.open("w") as handle:
        handle.write("user_id,item_id,rating,timestamp\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            frame = pl.DataFrame(
                {
                    "user_id": rng.integers(0, 100_000, n),
                    "item_id": np.minimum(rng.zipf(1.3, n), 50_000),
                    "rating": rng.integers(1, 6, n),
                    "timestamp": 1_500_000_000 + start + np.arange(n),
                }
            )
            handle.write(frame.write_csv(include_header=False))


def markdown(results: dict) -> str:
    commands = list(dict.fromkeys(run["command"] for run in results["runs"]))
    lines = [
        "| input | backend | rows | seconds | of which writing (lock) s | rows/s "
        "| re-ingest s (rows added) | peak RSS MiB | load avg | command |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results["runs"]:
        again = (
            f"{run['reingest_seconds']} ({run['reingest_added']})"
            if run["reingest_seconds"] is not None
            else "not run"
        )
        lines.append(
            f"| {run['input']} | {run['backend']} | {run['rows']:,} | {run['seconds']} | "
            f"{run.get('merge_seconds', 'n/a')} | {run['rows_per_s']:,} | {again} | "
            f"{run['peak_rss_mib']} | "
            f"{run['load_average_after']} | ({commands.index(run['command']) + 1}) |"
        )
    lines.append("")
    lines += [f"({n}) `{command}`  " for n, command in enumerate(commands, start=1)]
    lines.append(f"Machine: {results['machine']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", default="5000000", help="synthetic file sizes, comma-separated (0: none)"
    )
    parser.add_argument("--synthetic-backends", default="sqlite,postgresql")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-movielens", action="store_true")
    parser.add_argument(
        "--synthetic-reingest", action="store_true", help="also time re-loading the big file"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return

    command = "python benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])
    backends = ["sqlite"] if args.skip_postgres else ["sqlite", "postgresql"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        workdir = Path(tmp)
        inputs = [] if args.skip_movielens else [("ml-100k", movielens_spec(workdir), backends)]
        for rows in (int(r) for r in args.rows.split(",") if int(r) > 0):
            big = workdir / f"synthetic_{rows}.csv"
            synthetic_csv(big, rows)
            synthetic = {
                "path": str(big),
                "format": "csv",
                "columns": {"rating": "rating"},
                "via": "--format csv",
                "chunk_rows": 100_000,
                "reingest": args.synthetic_reingest,
            }
            wanted = [b for b in args.synthetic_backends.split(",") if b in backends]
            inputs.append((f"synthetic {rows / 1e6:g}M", synthetic, wanted))
        for name, spec, targets in inputs:
            for backend in targets:
                run = {"input": name, "backend": backend, "via": spec["via"]}
                run |= measure(spec, backend, workdir)
                run |= {"load_average_after": round(os.getloadavg()[0], 1), "command": command}
                print(json.dumps(run))
                runs.append(run)
    save(runs)


def measure(spec: dict, backend: str, workdir: Path) -> dict:
    schema = None
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}"
    else:
        url, schema = fresh_postgres_schema()
    try:
        return child({**spec, "url": url})
    finally:
        if schema:
            drop_postgres_schema(schema)


def save(runs: list[dict]) -> None:
    """Merge into ingest.json: a new run replaces the old one of the same input and backend."""
    path = RESULTS / "ingest.json"
    previous = json.loads(path.read_text()) if path.exists() else {"runs": []}
    old = [{**r, "command": r.get("command", previous.get("command"))} for r in previous["runs"]]
    fresh = {(r["input"], r["backend"]) for r in runs}
    kept = [r for r in old if (r["input"], r["backend"]) not in fresh]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "runs": kept + runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
