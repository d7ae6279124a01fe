"""Ranking speed per mode on real MovieLens-100k requests with the default model.

    .venv/bin/python benchmarks/bench_ranking.py                    # 5 users, reason on 2
    .venv/bin/python benchmarks/bench_ranking.py --users 3 --reason-requests 1

Each request: a user's 20 most recent movies before the last one as history, and 20
candidates (the last movie + 19 random unseen ones, seed 7). Measured in one run, one request
at a time unless said otherwise:

* `prefill`: one cold forward pass over the incremental prompt (KV cache cleared), i.e. the
  first step of incremental mode alone;
* each mode's ms per request (KV cache cleared before each request) and generated tokens;
* `incremental` batched: `rank_batch` over all users at once, ms per request;
* ratios: incremental / prefill (median of per-request ratios) and reason / incremental.

`reason` is capped at --reason-max-new-tokens per step (default 64, not the 1,024 of the
paper) and run on --reason-requests users only: it is by far the slowest mode, so the cap makes
its time, and the reason / incremental ratio, an UNDER-estimate.
Writes benchmarks/results/ranking.json and benchmarks/results/ranking.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ML100K = REPO.parent / "shared" / "data" / "movielens-100k"


def ml100k_request(
    user: str = "1",
    n_history: int = 20,
    n_candidates: int = 20,
    seed: int = 7,
    data_dir: Path = ML100K,
):
    """(RankRequest, target id): the user's last rated movie among 19 random unseen ones."""
    from ranking.types import Candidate, RankRequest

    titles = {}
    with open(data_dir / "u.item", encoding="latin-1") as fh:
        for line in fh:
            parts = line.split("|")
            titles[parts[0]] = parts[1]
    rows = []
    with open(data_dir / "u.data", encoding="latin-1") as fh:
        for line in fh:
            u, item, _rating, ts = line.rstrip("\n").split("\t")
            if u == user:
                rows.append((int(ts), item))
    rows.sort()
    seen = [item for _, item in rows]
    target = seen[-1]
    history = tuple(titles[i] for i in seen[-1 - n_history : -1])
    rng = random.Random(seed)
    items = [target, *rng.sample(sorted(set(titles) - set(seen)), n_candidates - 1)]
    rng.shuffle(items)
    cands = tuple(Candidate(i, titles[i]) for i in items)
    return RankRequest(task="rec-movie", history=history, candidates=cands), target


def _log(msg: str) -> None:
    print(f"[bench_ranking {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed_rank(ranker, request) -> tuple[float, object]:
    ranker.backend.clear_cache()
    t0 = time.perf_counter()
    res = ranker.rank(request)
    return (time.perf_counter() - t0) * 1000.0, res


def _prefill_ms(ranker, request) -> tuple[float, int]:
    from ranking.modes.incremental import build_sequence

    seq = build_sequence(request, ranker.backend)
    ranker.backend.clear_cache()
    t0 = time.perf_counter()
    ranker.backend.next_token_logprobs([seq.prompt_ids], [seq.label_ids])
    return (time.perf_counter() - t0) * 1000.0, len(seq.prompt_ids)


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    import torch

    from ranking.engine import load_ranker

    t0 = time.perf_counter()
    ranker = load_ranker(
        args.model, device=args.device, reason_max_new_tokens=args.reason_max_new_tokens
    )
    load_s = time.perf_counter() - t0
    _log(f"loaded {ranker.model_id} in {load_s:.1f}s, torch threads {torch.get_num_threads()}")
    users = [str(u) for u in range(1, args.users + 1)]
    reqs = [ml100k_request(u)[0] for u in users]
    _timed_rank(ranker, reqs[0])  # warm-up (allocations, lazy imports)

    per_mode: dict[str, list[tuple[float, int]]] = {
        m: [] for m in ("incremental", "score", "direct")
    }
    prefill, ratios, prompt_tokens = [], [], []
    for k, req in enumerate(reqs):
        p_ms, n_tok = _prefill_ms(ranker, req)
        prefill.append(p_ms)
        prompt_tokens.append(n_tok)
        for mode in per_mode:
            ms, res = _timed_rank(ranker, dataclasses.replace(req, mode=mode))
            per_mode[mode].append((ms, res.generated_tokens))
        ratios.append(per_mode["incremental"][-1][0] / p_ms)
        _log(
            f"user {users[k]}: prefill {p_ms:.0f} ms ({n_tok} tokens), "
            + ", ".join(f"{m} {v[-1][0]:.0f} ms" for m, v in per_mode.items())
        )

    ranker.backend.clear_cache()
    t0 = time.perf_counter()
    ranker.rank_batch(reqs)
    batched_ms = (time.perf_counter() - t0) * 1000.0 / len(reqs)
    _log(f"incremental rank_batch: {batched_ms:.0f} ms/request")

    reason = []
    for req in reqs[: args.reason_requests]:
        ms, res = _timed_rank(ranker, dataclasses.replace(req, mode="reason"))
        reason.append((ms, res.generated_tokens, res.invalid_answers))
        _log(f"reason: {ms:.0f} ms, {res.generated_tokens} tokens, {res.invalid_answers} invalid")

    def summary(rows):
        return {
            "ms_per_request": round(statistics.median(r[0] for r in rows), 1),
            "generated_tokens": round(statistics.mean(r[1] for r in rows), 1),
            "requests": len(rows),
        }

    modes = {m: summary(v) for m, v in per_mode.items()}
    modes["incremental (rank_batch)"] = {
        "ms_per_request": round(batched_ms, 1),
        "generated_tokens": modes["incremental"]["generated_tokens"],
        "requests": len(reqs),
    }
    if reason:
        modes["reason"] = summary(reason)
        modes["reason"]["invalid_answers"] = sum(r[2] for r in reason)
    inc = modes["incremental"]["ms_per_request"]
    return {
        "command": "python benchmarks/bench_ranking.py " + " ".join(sys.argv[1:]),
        "model": ranker.model_id,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "n_candidates": 20,
        "n_history": 20,
        "prompt_tokens": round(statistics.mean(prompt_tokens), 1),
        "prefill_ms": round(statistics.median(prefill), 1),
        "modes": modes,
        "incremental_over_prefill": round(statistics.median(ratios), 3),
        "reason_over_incremental": round(modes["reason"]["ms_per_request"] / inc, 1)
        if reason
        else None,
        "reason_max_new_tokens": args.reason_max_new_tokens,
        "model_load_s": round(load_s, 1),
    }


def markdown(res: dict) -> str:
    lines = [
        f"Ranking speed, {res['model']} on {res['device']} ({res['torch_threads']} torch threads), "
        f"{res['n_candidates']} candidates + {res['n_history']}-item history "
        f"(~{res['prompt_tokens']:.0f} prompt tokens); command: `{res['command'].strip()}`",
        "",
        "| mode | ms / request | generated tokens | requests |",
        "| --- | ---: | ---: | ---: |",
    ]
    n_req = res["modes"]["incremental"]["requests"]
    lines.append(f"| one prefill (reference) | {res['prefill_ms']:.0f} | 0 | {n_req} |")
    for mode, row in res["modes"].items():
        ms, toks, n = row["ms_per_request"], row["generated_tokens"], row["requests"]
        lines.append(f"| {mode} | {ms:.0f} | {toks:.0f} | {n} |")
    lines += [
        "",
        f"- incremental / one prefill: **{res['incremental_over_prefill']:.2f}x** (target <= 1.3x)",
    ]
    if res["reason_over_incremental"] is not None:
        lines.append(
            f"- reason / incremental: **{res['reason_over_incremental']:.0f}x** (target >= 20x; "
            f"reason capped at {res['reason_max_new_tokens']} new tokens per step, so this "
            "under-states it)"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--reason-requests", type=int, default=2)
    parser.add_argument("--reason-max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranking.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "ranking.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
