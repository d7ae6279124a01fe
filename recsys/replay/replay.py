"""Offline A/B replay: two rankers on the same logged traffic.

Each logged request (what was shown, in which order, with the logging policy's propensity)
is joined with what the user did next (the ground truth). Then:

* **replay** — both policies re-rank the logged candidates; each is scored by the rank it
  gives the ground truth (MRR, NDCG@10, Hit@1/5). The paired difference B − A comes with a
  paired bootstrap 95% interval, so a reader sees at once whether B is better or noise.
* **off-policy estimates** — the value of policy B *sampling at temperature 1*, for the reward
  the logged ranking earned (reciprocal rank of the ground truth), from importance weights
  π_B(logged ranking) / π_logging(logged ranking). π_B is exact and is the probability under
  what B *serves* (its prompt style, backend, fusion weight and abstention): the engine
  forces its steps along the logged order (`Ranker.log_probabilities`). The effective sample
  size says how far to trust it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ranking.engine import Ranker
from ranking.metrics import hit_at_k, ndcg_at_k, reciprocal_rank
from ranking.rl.episodes import Episode
from ranking.types import RankRequest, is_permutation_of
from recsys.replay.estimators import (
    IPS,
    SNIPS,
    ClippedIPS,
    LoggedData,
    effective_sample_size,
)
from recsys.stats import bootstrap_mean

METRICS: dict[str, Callable[[Sequence[str], str], float]] = {
    "mrr": reciprocal_rank,
    "ndcg@10": lambda order, truth: ndcg_at_k(order, truth, 10),
    "hit@1": lambda order, truth: hit_at_k(order, truth, 1),
    "hit@5": lambda order, truth: hit_at_k(order, truth, 5),
}


@dataclass
class ReplayReport:
    n: int
    policies: dict[str, dict[str, float]]  # policy -> metric -> mean
    difference: dict[str, dict[str, float]]  # metric -> {mean, low, high} of B - A
    off_policy: dict[str, Any] = field(default_factory=dict)
    per_request: dict[str, list[float]] = field(default_factory=dict)  # policy -> RR list
    slate: dict[str, Any] = field(default_factory=dict)  # recsys.replay.slate_report
    source: str = "logged requests"  # what was replayed: the database's log, or an episode file

    def markdown(self, a: str, b: str) -> str:
        lines = [
            f"Replay of {self.n} {self.source}: A = `{a}`, B = `{b}`.",
            "",
            "| metric | A | B | B − A | 95% interval |",
            "|---|---|---|---|---|",
        ]
        for metric, diff in self.difference.items():
            lines.append(
                f"| {metric} | {self.policies['A'][metric]:.4f} | "
                f"{self.policies['B'][metric]:.4f} | {diff['mean']:+.4f} | "
                f"[{diff['low']:+.4f}, {diff['high']:+.4f}] |"
            )
        if self.off_policy:
            lines += ["", "Off-policy value of B sampling at T=1 (reward: logged RR):", ""]
            lines += [f"- {k}: {v}" for k, v in self.off_policy.items()]
        if self.slate:
            lines += ["", *slate_markdown(self.slate)]
        return "\n".join(lines)


def slate_markdown(slate: dict[str, Any]) -> list[str]:
    how = "exact" if slate.get("exact") else f"{slate.get('draws')} sampled rankings per policy"
    lines = [
        f"Per-position estimates of B's MRR on the logged ground truth ({slate['rounds']} "
        f"rounds; marginals: {how}, mean standard error "
        f"{slate['marginal_standard_error']:.3f}):",
        "",
        "| estimator | value | 95% interval | effective sample size |",
        "|---|---|---|---|",
    ]
    for name in [n for n in ("iips", "rips") if n in slate]:
        e = slate[name]
        lines.append(f"| {name.upper()} | {e['estimate']:.4f} | [{e['low']:.4f}, "
                     f"{e['high']:.4f}] | {e['ess']:.1f} |")  # fmt: skip
    if "whole_ranking_ips_ess" in slate:
        lines.append(f"| whole-ranking IPS | — | — | {slate['whole_ranking_ips_ess']:.1f} |")
    lines.append(f"\nThe logging policy's own MRR on these rounds: "
                 f"{slate['logging policy (on-policy mean)']:.4f}.")  # fmt: skip
    return lines


def replay(
    logged: Sequence[Episode],
    rank_a: Callable[[list[RankRequest]], list[Sequence[str]]],
    rank_b: Callable[[list[RankRequest]], list[Sequence[str]]],
    *,
    target_log_propensity: TargetLogPropensity | None = None,
    seed: int = 7,
) -> ReplayReport:
    """Compare two rank functions (requests -> orders) on logged requests: episodes with the
    logged order and propensity (`recsys.training.episode_from_logged` of the database's
    `recsys.db.events.logged_requests`)."""
    if not logged:
        from recsys.errors import UserError

        raise UserError("no logged requests with an outcome to replay; log impressions first")
    requests = [entry.request for entry in logged]
    orders = {"A": rank_a(requests), "B": rank_b(requests)}
    scores = {
        p: {
            m: np.array([fn(o, e.ground_truth) for o, e in zip(orders[p], logged, strict=True)])
            for m, fn in METRICS.items()
        }
        for p in orders
    }
    report = ReplayReport(
        n=len(logged),
        policies={p: {m: float(v.mean()) for m, v in s.items()} for p, s in scores.items()},
        difference={
            m: asdict(bootstrap_mean(scores["B"][m] - scores["A"][m], seed=seed)) for m in METRICS
        },
        per_request={p: scores[p]["mrr"].tolist() for p in scores},
    )
    if target_log_propensity is not None:
        report.off_policy = off_policy_estimates(logged, target_log_propensity)
    return report


def off_policy_estimates(
    logged: Sequence[Episode], target_log_propensity: TargetLogPropensity
) -> dict[str, Any]:
    """IPS / clipped IPS / SNIPS of the logged-RR reward under the target policy, on the
    requests that logged a propensity for a full ranking of their candidates."""
    usable = [e for e in logged if has_propensity(e)]
    if not usable:
        return {"note": "no request carries a logged propensity (built episodes have none): "
                "off-policy estimates need them"}  # fmt: skip
    data = LoggedData(
        rewards=np.array([reciprocal_rank(e.logged_order, e.ground_truth) for e in usable]),
        logging_propensity=np.exp([e.logged_log_propensity for e in usable]),
        target_propensity=np.exp(np.asarray(target_log_propensity(usable), dtype=np.float64)),
    )
    out: dict[str, Any] = {"rounds": len(usable), "ess": round(effective_sample_size(data), 2)}
    for est in (IPS(), ClippedIPS(), SNIPS()):
        low, high = est.interval(data, n_boot=500)
        out[est.name] = f"{est.estimate(data):.4f} [{low:.4f}, {high:.4f}]"
    out["logging policy (on-policy mean)"] = f"{float(data.rewards.mean()):.4f}"
    return out


# episodes -> log pi(logged ranking) under a target policy, one per episode (batched)
TargetLogPropensity = Callable[[Sequence[Episode]], Sequence[float]]


def served_log_propensity(
    ranker: Ranker, on_ranked: Callable[[int], None] | None = None
) -> TargetLogPropensity:
    """log pi(logged ranking) under what `ranker` serves, sampling at T = 1: the engine
    scores each logged order (`Ranker.log_probabilities`) with the ranker's own prompt style
    (hybrid soft tokens included), backend (a committee's pooled steps), fusion weight and
    abstention, in the request's mode. So the estimate is of the policy that would be
    deployed, not of its language model alone. `on_ranked(n)`: as `Ranker.rank_batch`."""

    def log_propensity(entries: Sequence[Episode]) -> list[float]:
        requests = [dataclasses.replace(e.request, temperature=0.0) for e in entries]
        orders = [list(e.logged_order or ()) for e in entries]
        return ranker.log_probabilities(requests, orders, on_ranked=on_ranked)

    return log_propensity


def has_propensity(entry: Episode) -> bool:
    """The logged ranking has a propensity and orders every candidate the ranker was given
    (the one whose probability a target policy can be asked for)."""
    order = entry.logged_order
    return (entry.logged_log_propensity is not None and bool(order)
            and is_permutation_of(order, entry.request.ids))  # fmt: skip


def rank_function(
    spec: str,
    logged: Sequence[Episode],
    *,
    device: str | None = None,
    mode: str = "incremental",
) -> tuple[Callable[[list[RankRequest]], list[Sequence[str]]], Any]:
    """A policy by name: 'logged' (what was shown), 'retrieval' (by candidate score), or a
    ranker model spec (default | promoted | version | path). Returns (rank_fn, the ranker
    or None)."""
    if spec == "logged":
        if any(e.logged_order is None for e in logged):
            from recsys.errors import UserError

            raise UserError("policy 'logged' needs the order each request was shown in, and "
                            "these episodes have none (built, not logged): use retrieval (by "
                            "candidate score) or a model")  # fmt: skip
        shown = {id(e.request): list(e.logged_order or ()) for e in logged}
        return (lambda requests: [shown[id(r)] for r in requests]), None
    if spec == "retrieval":
        return (lambda requests: [_by_score(r) for r in requests]), None
    from recsys import runtime

    ranker = runtime.load_ranker(model=spec, device=device)

    def rank(
        requests: list[RankRequest], on_ranked: Callable[[int], None] | None = None
    ) -> list[Sequence[str]]:
        """The orders; a tqdm bar, or `on_ranked(n)` as batches finish when given."""
        requests = [dataclasses.replace(r, mode=mode, temperature=0.0) for r in requests]
        results = ranker.rank_batch(requests, progress=on_ranked is None, on_ranked=on_ranked)
        return [res.order for res in results]

    return rank, ranker


def _by_score(request: RankRequest) -> list[str]:
    scored = [
        (-(c.score if c.score is not None else float("-inf")), i, c.id)
        for i, c in enumerate(request.candidates)
    ]
    return [cid for _, _, cid in sorted(scored)]


def _plot_ess(ax: Any, slate: dict[str, Any], n: int) -> None:
    names = [n.upper() for n in ("iips", "rips") if n in slate]
    values = [slate[n.lower()]["ess"] for n in names]
    if "whole_ranking_ips_ess" in slate:
        names.append("whole-ranking\nIPS")
        values.append(slate["whole_ranking_ips_ess"])
    ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:gray"][: len(values)])
    ax.axhline(slate["rounds"], color="black", linewidth=0.8, linestyle="--")
    ax.set_title(f"effective sample size of {slate['rounds']} rounds")
    ax.set_yscale("log")


def plot_report(report: ReplayReport, a: str, b: str, path: str) -> None:
    """Bar chart: each metric for A and B, and B − A with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(report.difference)
    panels = 3 if report.slate else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    left, right = axes[0], axes[1]
    x = np.arange(len(metrics))
    left.bar(x - 0.2, [report.policies["A"][m] for m in metrics], 0.4, label=f"A: {a}")
    left.bar(x + 0.2, [report.policies["B"][m] for m in metrics], 0.4, label=f"B: {b}")
    left.set_xticks(x, metrics)
    left.set_title(f"{report.n} {report.source}")
    left.legend(fontsize=8)
    diffs = [report.difference[m] for m in metrics]
    means = [d["mean"] for d in diffs]
    errors = [[d["mean"] - d["low"] for d in diffs], [d["high"] - d["mean"] for d in diffs]]
    right.bar(x, means, yerr=errors, capsize=4, color="tab:green")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(x, metrics)
    right.set_title("B − A (paired bootstrap 95%)")
    if report.slate:
        _plot_ess(axes[2], report.slate, len(report.per_request.get("A", [])) or report.n)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
