"""Probe (plan: docs/results/history/README.md): the trained LM with a longer history.

    RECSYS_TORCH_THREADS=2 python benchmarks/history_probe.py --task rec-movie \
        --model models/hybrid-rec-movie-dagger --alpha 5

The held-out instances (seed 7) with their last 20 history items, as evaluated, and with
the last `--long` (the user's whole pre-target sequence when shorter); same candidates,
same LambdaMART (seed 7) scores. Ranked by the LM alone and served at `--alpha`. Writes
benchmarks/results/history-TASK[-TAG].{json,md}.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from eval_files import cell, paired  # benchmarks/ is on sys.path
from heldout import heldout_with_lambdamart, probe_parser, reciprocal_ranks
from one_row import write_rows


def longer(taskset, length: int) -> list:
    """The instances with each user's last `length` training items as history (the
    evaluated history is the last 20 of the same sequence: checked)."""
    log = dict(taskset.train.group_by("user_id", maintain_order=True).agg("item_id").iter_rows())
    titles = taskset.catalogue
    out = []
    for inst in taskset.instances:
        items = [str(i) for i in log[inst.user_id]]
        assert tuple(items[-len(inst.history_ids) :]) == inst.history_ids, inst.id
        ids = tuple(items[-length:])
        out.append(dataclasses.replace(inst, history_ids=ids,
                                       history=tuple(titles[i] for i in ids)))  # fmt: skip
    return out


def scored(instances, scores) -> list:
    """The instances with their candidates carrying LambdaMART's scores (the fusion signal)."""
    from recsys.eval.baselines import scored_candidates

    return [dataclasses.replace(i, candidates=scored_candidates(i, s))
            for i, s in zip(instances, scores, strict=True)]  # fmt: skip


def main() -> None:
    from recsys import runtime

    parser = probe_parser(__doc__)
    parser.add_argument("--long", type=int, default=40, help="the longer history")
    parser.add_argument("--tag", default="", help="results file suffix: history-TASK-TAG")
    args = parser.parse_args()

    taskset, scorer = heldout_with_lambdamart(args.task)
    scores = [scorer.scores(i) for i in taskset.instances]
    variants = {"20": scored(taskset.instances, scores),
                str(args.long): scored(longer(taskset, args.long), scores)}  # fmt: skip
    mean_len = {n: float(np.mean([len(i.history_ids) for i in v])) for n, v in variants.items()}
    targets = [i.target for i in taskset.instances]
    engine = runtime.load_ranker(model=args.model, fusion_alpha=0.0)
    rr, cpu = {}, {}
    for how, alpha in (("LM alone", 0.0), ("served", args.alpha)):
        for name, instances in variants.items():
            rr[how, name], cpu[how, name] = reciprocal_ranks(engine, instances, targets, alpha)
    header = ["task", "ranking", "history 20: MRR", f"history {args.long}: MRR",
              f"{args.long} - 20 [95% CI]", "wins / losses", "CPU s/request 20 / long"]  # fmt: skip
    rows = []
    for how in ("LM alone", "served"):
        a, b = rr[how, str(args.long)], rr[how, "20"]
        rows.append([args.task, how, f"{100 * b.mean():.2f}", f"{100 * a.mean():.2f}",
                     cell(paired(a, b)), f"{int((a > b).sum())} / {int((a < b).sum())}",
                     f"{cpu[how, '20']:.2f} / {cpu[how, str(args.long)]:.2f}"])  # fmt: skip
    result = {"task": args.task, "model": args.model, "alpha": args.alpha, "long": args.long,
              "n": len(taskset.instances), "mean_history": mean_len,
              "rr": {f"{h} / {n}": v.round(6).tolist() for (h, n), v in rr.items()},
              "rows": [dict(zip(header, row, strict=True)) for row in rows]}  # fmt: skip
    name = f"history-{args.task}" + (f"-{args.tag}" if args.tag else "")
    write_rows(Path("benchmarks/results") / name, result, header, rows)


if __name__ == "__main__":
    main()
