"""What the fitted-model cache saves: LambdaMART on a rec task, fitted, then loaded.

    .venv/bin/python benchmarks/bench_fit_cache.py                 # rec-game and rec-movie
    .venv/bin/python benchmarks/bench_fit_cache.py --task rec-game

Per task, in one process: build the task, fit LambdaMART into an empty cache (a miss: the
whole protocol of recsys/eval/ltr.py, then the entry written), load it back (a hit), and
check the loaded model scores every evaluated instance exactly as the fitted one. Times are
CPU seconds of this process (the machine is shared, wall time is noisier) and wall seconds.
Writes benchmarks/results/fit_cache.json and benchmarks/results/fit_cache.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys.eval import tasks
from recsys.eval.fit_cache import FitCache
from recsys.eval.ltr import LambdaMARTBaseline
from recsys.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 7


def timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(task: str) -> dict:
    ts = tasks.build_task(task, tasks.default_data(task, get_settings().data_dir), SEED)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FitCache(tmp)
        fitted, loaded = LambdaMARTBaseline(SEED, cache), LambdaMARTBaseline(SEED, cache)
        miss_cpu, miss_wall = timed(lambda: fitted.prepare(ts))
        hit_cpu, hit_wall = timed(lambda: loaded.prepare(ts))
        same = all(np.array_equal(fitted.scores(i), loaded.scores(i)) for i in ts.instances)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    assert (cache.misses, cache.hits) == (1, 1)
    return {
        "task": task,
        "interactions": ts.train.height,
        "instances": len(ts.instances),
        "fit_cpu_s": round(miss_cpu, 1),
        "fit_wall_s": round(miss_wall, 1),
        "load_cpu_s": round(hit_cpu, 2),
        "load_wall_s": round(hit_wall, 2),
        "speedup_cpu": round(miss_cpu / hit_cpu, 1),
        "entry_mb": round(size / 2**20, 1),
        "identical_scores": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", choices=["rec-movie", "rec-game"])
    args = parser.parse_args()
    rows = [measure(t) for t in args.task or ["rec-movie", "rec-game"]]
    command = "python benchmarks/bench_fit_cache.py " + " ".join(sys.argv[1:])
    doc = {"command": command.strip(), "machine": f"{platform.machine()}, "
           f"{platform.python_version()}", "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
           time.gmtime()), "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_cache.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    lines = [
        "| task | interactions | fit CPU s (wall) | load CPU s (wall) | CPU ratio | entry MB "
        "| identical scores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['interactions']:,} | {r['fit_cpu_s']} ({r['fit_wall_s']}) | "
            f"{r['load_cpu_s']} ({r['load_wall_s']}) | {r['speedup_cpu']}x | {r['entry_mb']} | "
            f"{'yes' if r['identical_scores'] else 'NO'} ({r['instances']} instances) |"
        )
    lines += ["", f"`{doc['command']}`, {doc['finished']}, {doc['machine']}; both in one run."]
    (RESULTS / "fit_cache.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
