"""Model load time: a GGUF parsed by transformers against its cached Hugging Face
conversion (ranking.loading._from_conversion, docs/ranking.md "Loading").

    RECSYS_TORCH_THREADS=2 python benchmarks/bench_load.py

Each load runs in a fresh process (nothing cached in memory), through `recsys.runtime`
as every entry point loads: from the GGUF (`RECSYS_CONVERT_GGUF=false`), converting into
an empty cache, then from the filled cache. Writes benchmarks/results/load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from one_row import write_rows  # benchmarks/ is on sys.path when a script runs

PROBE = (
    "import json, sys, time; from recsys import runtime; t = time.perf_counter(); "
    "c = time.process_time(); runtime.load_ranker(model=sys.argv[1]); "
    "print(json.dumps({'wall_s': time.perf_counter() - t, 'cpu_s': time.process_time() - c}))"
)
MODELS = ("default", "models/hybrid-rec-movie-dagger", "models/committee-rec-movie")


def timed_load(model: str, cache: Path, convert: bool) -> dict[str, float]:
    env = {**os.environ, "RECSYS_MODEL_CACHE_DIR": str(cache),
           "RECSYS_CONVERT_GGUF": "true" if convert else "false"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", PROBE, model], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model specs (default: three)")
    args = parser.parse_args()
    rows, result = [], {"threads": os.environ.get("RECSYS_TORCH_THREADS"), "loads": {}}
    for model in args.model or MODELS:
        with tempfile.TemporaryDirectory() as cache:
            loads = {"GGUF": timed_load(model, Path(cache), convert=False),
                     "converting": timed_load(model, Path(cache), convert=True),
                     "converted": timed_load(model, Path(cache), convert=True)}  # fmt: skip
        result["loads"][model] = loads
        ratio = loads["GGUF"]["wall_s"] / loads["converted"]["wall_s"]
        cells = [f"{loads[k]['wall_s']:.1f} ({loads[k]['cpu_s']:.1f})" for k in loads]
        rows.append([model, *cells, f"{ratio:.1f}x"])
    header = ["model", "from the GGUF: wall s (CPU s)", "first load, converting",
              "from the conversion", "GGUF / converted"]  # fmt: skip
    write_rows(Path("benchmarks/results/load"), result, header, rows)


if __name__ == "__main__":
    main()
