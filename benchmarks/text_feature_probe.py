"""Do title semantics carry what LambdaMART's features lack? LambdaMART with its 15 features
against the same fit with three sentence-embedding similarities added, on the held-out
users. The plan, fixed before any number existed: docs/results/text-features/README.md.

    python benchmarks/text_feature_probe.py --task rec-movie

writes benchmarks/results/text-features-TASK.{json,md} and the 18-feature ranker's results
in the `recsys eval --out` layout (docs/results/text-features/TASK-lambdamart-text.json).

Features per candidate c, history h_1..h_n, on L2-normalised all-MiniLM-L6-v2 title
embeddings e: text_mean = cos(e_c, mean_j e_hj), text_max = max_j cos(e_c, e_hj),
text_last = cos(e_c, e_hn).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from eval_files import cell, paired, rr_by_instance, run_of  # benchmarks/ is on sys.path
from one_row import write_rows

SEED = 7
TEXT_FEATURES = ("text_mean", "text_max", "text_last")


def text_features(
    emb: Mapping[str, np.ndarray], history: Sequence[str], candidates: Sequence[str]
) -> np.ndarray:
    """(len(candidates), 3) in TEXT_FEATURES order; zeros without a history."""
    c = np.stack([emb[i] for i in candidates])
    if not history:
        return np.zeros((len(candidates), len(TEXT_FEATURES)))
    h = np.stack([emb[i] for i in history])
    mean = h.mean(0)
    mean = mean / (np.linalg.norm(mean) or 1.0)
    sims = c @ h.T
    return np.column_stack([c @ mean, sims.max(1), sims[:, -1]])


def reciprocal_ranks(scored: Sequence[np.ndarray], targets: Sequence[int]) -> np.ndarray:
    """As the baselines rank: descending score, ties in candidate order (stable)."""
    out = []
    for s, t in zip(scored, targets, strict=True):
        order = np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")
        out.append(1.0 / (int(np.where(order == t)[0][0]) + 1))
    return np.array(out)


def differing(
    path: Path, task: str, ranker: str | None, instances: Sequence, rr: np.ndarray
) -> int:
    """Instances whose reciprocal rank differs from a results file's run (6 decimals kept)."""
    rows = rr_by_instance(run_of(path, task, ranker))
    return int(sum(abs(rows[i.id] - v) > 1e-5 for i, v in zip(instances, rr, strict=True)))


def served_over(
    model: str | object, alpha: float, instances: Sequence, scores: Sequence[np.ndarray]
) -> np.ndarray:
    """Reciprocal ranks of `model` (a spec, or a loaded ranker) ranking each instance fused
    at `alpha` with `scores`."""
    from recsys import runtime
    from recsys.eval.baselines import scored_candidates

    engine = runtime.load_ranker(model=model, fusion_alpha=0.0) if isinstance(model, str) else model
    requests = [
        replace(i, candidates=scored_candidates(i, s)).to_request("incremental", fusion_alpha=alpha)
        for i, s in zip(instances, scores, strict=True)
    ]
    results = engine.rank_batch(requests, progress=True)
    return np.array(
        [1.0 / (r.order.index(i.target) + 1) for r, i in zip(results, instances, strict=True)]
    )


def seed_spread(args, plain, with_text, x_eval, t_eval, insts, targets, cold) -> None:  # type: ignore[no-untyped-def]
    """Plan 3: both LambdaMARTs refitted with each LightGBM seed on the same groups, the LM
    served over each fit (not with --fits-only); per seed and mean / range. `cold`: the
    cold-start slice's mask, for 18 - 15 on it."""
    from recsys import runtime
    from retrieval.features import FEATURE_NAMES
    from retrieval.ltr import LambdaMART

    engine = None if args.fits_only else runtime.load_ranker(model=args.served_model,
                                                             fusion_alpha=0.0)  # fmt: skip
    x_text = [np.column_stack([x, t]) for x, t in zip(x_eval, t_eval, strict=True)]
    rows = []
    for seed in (int(v) for v in args.lgb_seeds.split(",")):
        base = LambdaMART.fit(plain, FEATURE_NAMES, seed=seed)
        text = LambdaMART.fit(with_text, (*FEATURE_NAMES, *TEXT_FEATURES), seed=seed)
        rr15 = reciprocal_ranks([base.scores(x) for x in x_eval], targets)
        scores = [text.scores(x) for x in x_text]
        rr18 = reciprocal_ranks(scores, targets)
        row = {"seed": seed, "lambdamart": 100 * rr15.mean(),
               "lambdamart_text": 100 * rr18.mean(), "text_minus_plain": paired(rr18, rr15),
               "text_minus_plain_cold": paired(rr18[cold], rr15[cold])}  # fmt: skip
        if engine is not None:
            served = served_over(engine, args.served_alpha, insts, scores)
            served15 = served_over(engine, args.served_alpha, insts,
                                   [base.scores(x) for x in x_eval])  # fmt: skip
            row |= {"served": 100 * served.mean(), "served_over_plain": 100 * served15.mean(),
                    "served_minus_text": paired(served, rr18),
                    "served_over_plain_minus_plain": paired(served15, rr15)}  # fmt: skip
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)

    diffs: tuple[str, ...] = ("text_minus_plain", "text_minus_plain_cold")
    levels: tuple[str, ...] = ("lambdamart", "lambdamart_text")
    if engine is not None:
        diffs += ("served_minus_text", "served_over_plain_minus_plain")
        levels += ("served", "served_over_plain")
    table = [[args.task, str(r["seed"]), *(f"{r[k]:.2f}" for k in levels),
              *(cell(r[k]) for k in diffs)] for r in rows]  # fmt: skip
    summary = {}
    for key in diffs:
        diffs = [r[key]["diff"] for r in rows]
        summary[key] = {"mean": float(np.mean(diffs)), "min": min(diffs), "max": max(diffs)}
    means = [f"{np.mean([r[k] for r in rows]):.2f}" for k in levels]
    spreads = [f"{v['mean']:+.2f} ({v['min']:+.2f}, {v['max']:+.2f})" for v in summary.values()]
    table.append([args.task, "mean (min, max)", *means, *spreads])
    header = ["task", "LightGBM seed", "LambdaMART (15)", "lambdamart-text (18)"]
    if engine is not None:
        header += [f"served over 18 at {args.served_alpha:g}", "served over 15"]
    header += ["18 - 15", f"18 - 15, cold-start ({int(cold.sum())})"]
    if engine is not None:
        header += ["served over 18 - 18", "served over 15 - 15"]
    result = {"task": args.task, "model": args.served_model, "alpha": args.served_alpha,
              "rows": rows, "summary": summary}  # fmt: skip
    name = "fits" if engine is None else Path(args.served_model).name
    write_rows(Path(f"benchmarks/results/text-features-seeds-{args.task}-{name}"), result,
               header, table)  # fmt: skip


def main() -> None:
    from recsys.eval.harness import COLD_START_MAX, target_counts
    from recsys.eval.instances import for_users
    from recsys.eval.ltr import NegativesProtocol, fit_feature_models, training_groups
    from recsys.eval.tasks import build_task, default_data
    from recsys.settings import get_settings
    from retrieval.embeddings import TextEmbedder
    from retrieval.features import FEATURE_NAMES
    from retrieval.ltr import LambdaMART

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--ltr", type=Path, default=Path("docs/results/portable/lambdamart.json"))
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results/text-features"))
    parser.add_argument("--served-model", help="also serve this LM fused with the 18 features")
    parser.add_argument("--served-alpha", type=float, default=5.0, help="its fusion weight")
    parser.add_argument(
        "--served-file", type=Path, help="check: the eval's served run, 15 features"
    )
    parser.add_argument("--served-ranker", help="its run's name in that file (a sweep)")
    parser.add_argument("--lgb-seeds", help="plan 3: refit with these LightGBM seeds, e.g. 1,2,3")
    parser.add_argument("--fits-only", action="store_true", help="with --lgb-seeds: no LM")
    args = parser.parse_args()

    settings = get_settings()
    full = build_task(args.task, default_data(args.task, settings.data_dir), SEED)
    heldout = for_users(full, "heldout", SEED)
    titles = full.catalogue or {}
    ids = sorted(titles)
    cache = settings.resolved_artifact_dir / "embedding-cache"
    vectors = TextEmbedder(cache_dir=cache).embed([titles[i] for i in ids], progress=True)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    emb = dict(zip(ids, vectors, strict=True))

    groups = training_groups(heldout, SEED, hard_negatives=NegativesProtocol.of(heldout).hard)
    with_text = [
        (np.column_stack([x, text_features(emb, i.history_ids, i.ids)]), y)
        for (x, y), i in zip(groups.labelled, groups.instances, strict=True)
    ]
    models = fit_feature_models(full.train, full, SEED)  # the whole training log (step 5)

    insts = heldout.instances
    x_eval = [models.features(i.user_id, i.history_ids, i.ids) for i in insts]
    t_eval = [text_features(emb, i.history_ids, i.ids) for i in insts]
    targets = [i.ids.index(i.target) for i in insts]
    counts = target_counts(heldout) or {}
    cold = np.array([counts.get(i.target, 0) < COLD_START_MAX for i in insts])
    if args.lgb_seeds:
        if not (args.served_model or args.fits_only):
            raise SystemExit("--lgb-seeds serves --served-model over each fit: give one")
        seed_spread(args, groups.labelled, with_text, x_eval, t_eval, insts, targets, cold)
        return
    base = LambdaMART.fit(groups.labelled, FEATURE_NAMES, seed=SEED)
    text = LambdaMART.fit(with_text, (*FEATURE_NAMES, *TEXT_FEATURES), seed=SEED)
    rr_base = reciprocal_ranks([base.scores(x) for x in x_eval], targets)
    text_scores = [
        text.scores(np.column_stack([x, t])) for x, t in zip(x_eval, t_eval, strict=True)
    ]
    rr_text = reciprocal_ranks(text_scores, targets)
    mismatch = differing(args.ltr, args.task, "lambdamart", insts, rr_base)

    def diff(mask: np.ndarray, a: np.ndarray = rr_text, b: np.ndarray = rr_base) -> str:
        return cell(paired(a[mask], b[mask]))

    rr_served, served_mismatch = None, None
    if args.served_model:  # plan 2: the LM fused with the 18-feature scores
        rr_served = served_over(args.served_model, args.served_alpha, insts, text_scores)
        if args.served_file:  # the probe's serving path against the eval's, 15 features
            again = served_over(args.served_model, args.served_alpha, insts,
                                [base.scores(x) for x in x_eval])  # fmt: skip
            served_mismatch = differing(args.served_file, args.task, args.served_ranker,
                                        insts, again)  # fmt: skip
            print("served with the 15 features vs the eval's, users differing:", served_mismatch)

    header = ["task", "slice", "n", "LambdaMART (15)", "+ text (18)", "18 - 15 [95% CI]"]
    table = [
        [args.task, name, str(int(m.sum())), f"{100 * rr_base[m].mean():.2f}",
         f"{100 * rr_text[m].mean():.2f}", diff(m)]
        for name, m in (("all", np.ones(len(insts), bool)), ("cold-start", cold)) if m.any()
    ]  # fmt: skip
    if rr_served is not None:
        for name, m in (("all", np.ones(len(insts), bool)), ("cold-start", cold)):
            if m.any():
                table.append([args.task, f"{name}: {args.served_model} at {args.served_alpha:g} "
                              "fused with the 18", str(int(m.sum())),
                              f"{100 * rr_base[m].mean():.2f}", f"{100 * rr_served[m].mean():.2f}",
                              f"served - 18: {diff(m, rr_served, rr_text)}; "
                              f"served - 15: {diff(m, rr_served, rr_base)}"])  # fmt: skip
    gain = text.importance()  # split-gain shares of the 18-feature fit
    result = {"task": args.task, "n": len(insts), "mismatches_15_vs_eval": mismatch,
              "served_15_mismatches_vs_eval": served_mismatch,
              "rows": [dict(zip(header, r, strict=True)) for r in table],
              "gain_importance_18": gain}  # fmt: skip
    write_rows(Path(f"benchmarks/results/text-features-{args.task}"), result, header, table)
    print("15-feature fit vs the eval's LambdaMART, users differing:", mismatch)
    run = {"task": args.task, "ranker": "lambdamart-text", "model": "lightgbm-lambdamart+minilm",
           "n": len(insts), "metrics": {"mrr": {"mean": float(rr_text.mean())}},
           "instances": [{"id": i.id, "user": str(i.user_id), "cold": bool(c), "mrr": float(v)}
                         for i, c, v in zip(insts, cold, rr_text, strict=True)]}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.task}-lambdamart-text.json"
    path.write_text(json.dumps({"runs": [run]}) + "\n")


if __name__ == "__main__":
    main()
