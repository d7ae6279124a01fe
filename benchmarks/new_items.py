"""Items newer than a hybrid model: what a candidate the model has no vector for does to
its ranking, now (new-item tokens, ranking.hybrid, and fusion abstaining on them,
ranking.fusion) and as before (any such candidate turned the whole prompt into letters and
titles).

    RECSYS_TORCH_THREADS=2 python benchmarks/new_items.py --task rec-movie \
        --model models/hybrid-rec-movie-dagger --alpha 5

On the held-out users' instances (seed 7), some candidates are given ids the model has never
seen (same title, same LambdaMART score: only the LM's knowledge of them is taken away):
none, one random negative, or the target itself (a new release the user chose). Each
condition is ranked by the LM alone and served (fused with LambdaMART, seed 7, at
`--alpha`) with new-item tokens, and served as before them, in one run, with the process
CPU seconds per request of each pass. The first `--users` held-out instances (the letters
and titles of "before" cost about 5 s of CPU a request). Writes
benchmarks/results/new-items-TASK.{json,md}.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from eval_files import cell, paired  # benchmarks/ is on sys.path
from heldout import heldout_with_lambdamart, probe_parser, reciprocal_ranks
from one_row import write_rows

CONDITIONS = {"none": 0, "1 new negative": 1, "new target": -1}


def renamed(inst, scores, how_many: int):
    """(instance with LambdaMART scores and `how_many` candidates renamed, target id);
    how_many -1: the target is the one renamed."""
    from recsys.eval.baselines import scored_candidates

    cands = list(scored_candidates(inst, scores))
    target = inst.target
    if how_many < 0:
        picked = {inst.ids.index(target)}
    else:
        digest = hashlib.sha256(f"{inst.id}:new".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        negatives = [k for k, c in enumerate(cands) if c.id != target]
        picked = set(rng.choice(negatives, size=how_many, replace=False).tolist())
    for k in picked:
        cands[k] = dataclasses.replace(cands[k], id=f"new:{cands[k].id}")
    new_target = f"new:{target}" if how_many < 0 else target
    return dataclasses.replace(inst, candidates=tuple(cands)), new_target


def main() -> None:
    from recsys import runtime

    parser = probe_parser(__doc__)
    parser.add_argument("--users", type=int, default=80, help="held-out instances ranked")
    args = parser.parse_args()

    taskset, scorer = heldout_with_lambdamart(args.task)
    instances = taskset.instances[: args.users]
    scores = [scorer.scores(i) for i in instances]
    engine = runtime.load_ranker(model=args.model, fusion_alpha=0.0)
    now_style = engine.backend.prompt_style
    before_style = dataclasses.replace(now_style, new_item_tokens=())
    rr: dict[tuple[str, str, str], np.ndarray] = {}
    cpu: dict[tuple[str, str, str], float] = {}
    passes = [(variant, how, alpha, style)
              for variant, style in (("now", now_style), ("before", before_style))
              for how, alpha in (("LM alone", 0.0), ("served", args.alpha))
              if (variant, how) != ("before", "LM alone")]  # fmt: skip
    for name, k in CONDITIONS.items():
        pairs = [renamed(i, s, k) for i, s in zip(instances, scores, strict=True)]
        renamed_instances, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        for variant, how, alpha, style in passes:
            if k == 0 and variant == "before":
                continue  # no new item: the same prompts
            engine.backend.prompt_style = style
            key = (name, variant, how)
            rr[key], cpu[key] = reciprocal_ranks(engine, renamed_instances, targets, alpha)
    engine.backend.prompt_style = now_style
    header = [
        "task",
        "candidates",
        "ranking",
        "before (letters): MRR, CPU s/request",
        "now (new-item tokens)",
        "now - before [95% CI]",
        "now - no new item [95% CI]",
    ]
    table = []
    for name in CONDITIONS:
        for how in ("LM alone", "served"):
            now, base = rr[name, "now", how], rr["none", "now", how]
            before = rr.get((name, "before", how))
            was = ""
            if before is not None:
                was = f"{100 * before.mean():.2f}, {cpu[name, 'before', how]:.2f}"
            table.append([args.task, name, how, was,
                          f"{100 * now.mean():.2f}, {cpu[name, 'now', how]:.2f}",
                          "" if before is None else cell(paired(now, before)),
                          "" if name == "none" else cell(paired(now, base))])  # fmt: skip
    result = {"task": args.task, "model": args.model, "alpha": args.alpha,
              "n": len(instances), "cpu_s_per_request": {" / ".join(k): v for k, v in cpu.items()},
              "rows": [dict(zip(header, row, strict=True)) for row in table]}  # fmt: skip
    write_rows(Path(f"benchmarks/results/new-items-{args.task}"), result, header, table)


if __name__ == "__main__":
    main()
