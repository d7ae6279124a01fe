"""How wrong were replay's off-policy estimates for a shipped model, and are they right now?

Logged traffic is simulated on a rec task's held-out instances: the shipped model, served
fused with a classical signal (and, with `--abstain-below`, abstaining), draws one ranking
per request at T = 1 and logs its exact propensity; the reward is the reciprocal rank of the
held-out target in the logged ranking. Two target policies are then estimated from that log:

* the logging policy itself (known answer: every weight 1, IPS = the logged mean);
* the same model served at another fusion weight (`--target-alpha`), whose true value is
  measured on-policy from `--draws` rankings it samples per request.

Each with the target's propensities as replay computes them now (`served_log_propensity`:
the engine forced along the logged order) and as it did before 2026-12-07 (the bare LM
teacher-forced on the paper's text prompt: no soft tokens, no fusion, no abstention).

    RECSYS_TORCH_THREADS=2 python benchmarks/replay_propensity.py --task rec-movie \
        --model models/hybrid-rec-movie-dagger --signal lightfm --alpha 5 --target-alpha 10

writes benchmarks/results/replay-propensity-TASK.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from one_row import write_rows  # benchmarks/ is on sys.path

from ranking.metrics import reciprocal_rank
from ranking.rl.episodes import Episode
from recsys.replay.estimators import IPS, SNIPS, LoggedData, effective_sample_size
from recsys.replay.replay import served_log_propensity

SEED = 7


def requests_of(task: str, signal: str, limit: int | None) -> list:
    """The held-out instances as `recsys eval` serves them: candidates scored by the signal
    (fitted on the task's training log), each with its training interactions."""
    from recsys.eval.baselines import scored_candidates
    from recsys.eval.fit_cache import FitCache
    from recsys.eval.harness import target_counts, with_interactions
    from recsys.eval.instances import for_users
    from recsys.eval.rankers import make_baseline
    from recsys.eval.tasks import build_task, default_data
    from recsys.settings import get_settings

    settings = get_settings()
    taskset = for_users(
        build_task(task, default_data(task, settings.data_dir), SEED), "heldout", SEED
    )
    scorer = make_baseline(signal, seed=SEED, cache=FitCache(settings.resolved_fit_cache_dir))
    scorer.prepare(taskset)
    counts = target_counts(taskset) or {}
    out = []
    for inst in taskset.instances[:limit]:
        scored = dataclasses.replace(inst, candidates=scored_candidates(inst, scorer.scores(inst)))
        out.append((with_interactions(scored, counts).to_request("incremental"), inst.target))
    return out


def text_prompt_log_propensity(backend) -> callable:  # type: ignore[valid-type]
    """What replay computed before: the bare LM teacher-forced on the paper's text prompt."""
    import torch

    from ranking.rl.policy import step_logprobs, taken_logprobs
    from ranking.rl.sequence import build_sequence

    def log_propensity(entries) -> list[float]:
        out = []
        for e in entries:
            seq = build_sequence(e.request, backend.tokenizer)
            index = {cid: i for i, cid in enumerate(seq.ids)}
            eliminated = [index[c] for c in reversed(e.logged_order)][:-1]
            with torch.inference_mode():
                steps = step_logprobs(backend.model, seq, eliminated)
                out.append(float(taken_logprobs(steps, eliminated).sum()))
        return out

    return log_propensity


def estimate(logged: list[Episode], target_lp: list[float], rewards: np.ndarray) -> dict:
    data = LoggedData(
        rewards=rewards,
        logging_propensity=np.exp([e.logged_log_propensity for e in logged]),
        target_propensity=np.exp(np.asarray(target_lp, dtype=np.float64)),
    )
    return {
        "ips": IPS().estimate(data),
        "ips_interval": IPS().interval(data, n_boot=500),
        "snips": SNIPS().estimate(data),
        "ess": effective_sample_size(data),
    }


def main() -> None:
    from ranking.engine import Ranker
    from recsys import runtime

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="rec-movie")
    ap.add_argument("--model", default="models/hybrid-rec-movie-dagger")
    ap.add_argument("--signal", default="lightfm", help="the classical fusion signal")
    ap.add_argument("--alpha", type=float, default=5.0, help="the logging policy's weight")
    ap.add_argument("--abstain-below", type=int, default=0)
    ap.add_argument("--target-alpha", type=float, default=10.0)
    ap.add_argument("--draws", type=int, default=8, help="target rankings per request (truth)")
    ap.add_argument("--limit", type=int, default=None, help="first N held-out requests")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pairs = requests_of(args.task, args.signal, args.limit)
    base = runtime.load_ranker(model=args.model)
    logger = Ranker(base.backend, fusion_alpha=args.alpha, fusion_abstain_below=args.abstain_below)
    target = Ranker(base.backend, fusion_alpha=args.target_alpha,
                    fusion_abstain_below=args.abstain_below)  # fmt: skip
    drawn = logger.rank_batch(
        [dataclasses.replace(r, temperature=1.0, seed=k) for k, (r, _) in enumerate(pairs)],
        progress=True,
    )
    logged = [
        Episode(r, t, logged_order=list(d.order), logged_log_propensity=d.log_propensity)
        for (r, t), d in zip(pairs, drawn, strict=True)
    ]
    rewards = np.array([reciprocal_rank(e.logged_order, e.ground_truth) for e in logged])
    # the target's true value: the mean reciprocal rank of its own draws
    truth_draws = target.rank_batch(
        [dataclasses.replace(r, temperature=1.0, seed=10_000 + 97 * k + d)
         for k, (r, _) in enumerate(pairs) for d in range(args.draws)],
        progress=True,
    )  # fmt: skip
    truth = float(np.mean([reciprocal_rank(res.order, t) for res, (_, t) in
                           zip(truth_draws, [p for p in pairs for _ in range(args.draws)],
                               strict=True)]))  # fmt: skip
    # the bare LM on the text prompt is the same policy whatever the fusion weight
    before = text_prompt_log_propensity(base.backend)(logged)
    rows, result = [], {"task": args.task, "model": args.model, "signal": args.signal,
                        "alpha": args.alpha, "abstain_below": args.abstain_below,
                        "target_alpha": args.target_alpha, "n": len(logged),
                        "logged_mean_rr": float(rewards.mean()),
                        "target_true_value": truth, "target_draws": args.draws}  # fmt: skip
    for name, policy, true_value in (
        (f"logging policy itself (alpha {args.alpha:g})", logger, float(rewards.mean())),
        (f"served at alpha {args.target_alpha:g}", target, truth),
    ):
        for how, lp in (("served (now)", served_log_propensity(policy)(logged)),
                        ("text-prompt LM (before)", before)):  # fmt: skip
            est = estimate(logged, lp, rewards)
            result[f"{name} / {how}"] = {**est, "true_value": true_value}
            low, high = est["ips_interval"]
            rows.append([name, how, f"{true_value:.4f}", f"{est['ips']:.4f} [{low:.4f}, "
                         f"{high:.4f}]", f"{est['snips']:.4f}", f"{est['ess']:.1f}"])  # fmt: skip
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = args.out or Path(f"benchmarks/results/replay-propensity-{args.task}")
    header = ["target policy", "its propensities", "true value (MRR)", "IPS [95%]", "SNIPS",
              f"ESS of {len(logged)}"]  # fmt: skip
    write_rows(out, result, header, rows)


if __name__ == "__main__":
    main()
