"""Prompt tokens per request: the paper-style prompt of the default model vs a hybrid
model's compact prompt, on the same held-out rec instances (no model is run: the counts
come from the tokenizer and the prompt builders the engine uses).

    python benchmarks/bench_prompts.py --task rec-movie --hybrid models/hybrid-rec-movie
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from one_row import write_one_row  # benchmarks/ is on sys.path when a script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="rec-movie")
    parser.add_argument("--hybrid", type=Path, required=True, help="a train-ranker model folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prompt_tokens"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from ranking.hybrid import TOKEN_FORMAT, read_manifest
    from ranking.model_spec import default_model_path
    from ranking.modes.incremental import build_sequence
    from ranking.rl.sequence import TokenizerOnly
    from ranking.rl.supervised import StyledTokenizer
    from recsys.eval.tasks import build_task, default_data, for_users

    gguf = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config, items = read_manifest(args.hybrid)
    hybrid_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokens = {i: TOKEN_FORMAT.format(i) for i in items}
    hybrid_tok.add_tokens(list(tokens.values()), special_tokens=True)
    paper = TokenizerOnly(tokenizer)
    compact = StyledTokenizer(hybrid_tok, config.style(tokens))
    taskset = for_users(build_task(args.task, default_data(args.task, args.data), args.seed),
                        "heldout", args.seed)  # fmt: skip
    counts = {"paper": [], "hybrid": []}
    for inst in taskset.instances:
        req = inst.to_request()
        counts["paper"].append(len(build_sequence(req, paper).prompt_ids))
        counts["hybrid"].append(len(build_sequence(req, compact).prompt_ids))
    result = {
        "task": args.task, "n": len(taskset.instances), "hybrid": str(args.hybrid),
        "paper_mean": float(np.mean(counts["paper"])), "paper_max": max(counts["paper"]),
        "hybrid_mean": float(np.mean(counts["hybrid"])), "hybrid_max": max(counts["hybrid"]),
    }  # fmt: skip
    result["ratio"] = round(result["paper_mean"] / result["hybrid_mean"], 2)
    write_one_row(
        args.out,
        result,
        ["task", "n", "paper prompt (mean / max)", "hybrid prompt (mean / max)", "ratio"],
        [args.task, str(result["n"]), f"{result['paper_mean']:.1f} / {result['paper_max']}",
         f"{result['hybrid_mean']:.1f} / {result['hybrid_max']}", f"{result['ratio']}x"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
