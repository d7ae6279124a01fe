"""Where a ranking request's CPU time goes: cProfile over incremental requests, one at a
time and in one `rank_batch`, grouped into the parts docs/ranking.md names.

    RECSYS_TORCH_THREADS=1 python benchmarks/profile_ranking.py \
        [--model models/hybrid-rec-movie-dagger] [--users 5] [--batch 16]

Writes benchmarks/results/profile_ranking[-TAG].json / .md: per setting, ms per request and
the share of the profiled time in the 4-bit step kernels, the other one-token step work,
the prefill (the transformers forward: torch `linear` under it), and the rest (Python
around them). Requests: `bench_ranking.ml100k_request` (a user's last movie among 19 random
unseen ones, 20 history items by id).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ranking import ml100k_request  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# (part, file suffix, function name or None for every function of the file), first match wins
PARTS = (
    ("4-bit step kernels", "q4_kernels.py", None),
    ("one-token step, the rest", "llama_step.py", None),
    ("prefill matmuls (torch linear)", "~", "<built-in method torch._C._nn.linear>"),
)


def profile(ranker, requests, batch: bool) -> dict:  # type: ignore[no-untyped-def]
    """ms per request and each part's share of the own (tottime) profiled time."""
    prof = cProfile.Profile()
    started = time.process_time()
    prof.enable()
    if batch:
        ranker.rank_batch(requests)
    else:
        for request in requests:
            ranker.rank(request)
    prof.disable()
    cpu_s = time.process_time() - started
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values())
    shares = dict.fromkeys([part[0] for part in PARTS] + ["everything else"], 0.0)
    for (path, _line, func), row in stats.items():
        shares[_part(path, func)] += row[2] / total
    return {"ms_per_request": round(1000 * cpu_s / len(requests), 1),
            "shares": {k: round(v, 3) for k, v in shares.items()}}  # fmt: skip


def _part(path: str, func: str) -> str:
    for name, suffix, wanted in PARTS:
        if path.endswith(suffix) and wanted in (None, func):
            return name
    return "everything else"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/hybrid-rec-movie-dagger")
    parser.add_argument("--users", type=int, default=5, help="requests ranked one at a time")
    parser.add_argument("--batch", type=int, default=16, help="requests in one rank_batch")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ranking.engine import load_ranker
    from recsys.settings import get_settings

    ranker = load_ranker(args.model, device="cpu", threads=get_settings().torch_threads)
    needed = 2 + args.users + args.batch
    reqs = [ml100k_request(str(u))[0] for u in range(1, needed + 1)]
    ranker.rank_batch(reqs[:2])  # warm-up: the step, the memo, lazy imports
    res = {
        "model": args.model,
        "command": "python benchmarks/profile_ranking.py " + " ".join(sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "one_at_a_time": profile(ranker, reqs[2 : 2 + args.users], batch=False),
        f"rank_batch_{args.batch}": profile(ranker, reqs[2 + args.users :], batch=True),
    }
    name = "profile_ranking" + (f"-{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    settings = [k for k in res if k == "one_at_a_time" or k.startswith("rank_batch")]
    parts = list(res[settings[0]]["shares"])
    head = f"| setting | ms / request (CPU) | {' | '.join(parts)} |"
    rows = [
        f"| {s} | {res[s]['ms_per_request']} | "
        + " | ".join(f"{100 * res[s]['shares'][p]:.0f}%" for p in parts)
        + " |"
        for s in settings
    ]
    return (
        f"Where a request's time goes, {res['model']} ({res['torch_threads']} torch threads, "
        f"{res['machine']}, {res['date']}); command: `{res['command']}`; shares of the "
        "profiled own time (cProfile tottime)\n\n"
        + "\n".join([head, "| --- | ---: |" + " ---: |" * len(parts), *rows])
        + "\n"
    )


if __name__ == "__main__":
    main()
