"""Reports over `recsys train` run folders: the runs' table, paired differences against
zero-shot, the retrieval order and classical recommenders, and training-curve plots
(`recsys train-report`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ranking.rl.episodes import reciprocal_ranks
from recsys.errors import UserError
from recsys.training import retrieval_orders, task_episodes


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(log records, final metrics or {}) of one training run folder."""
    run_dir = Path(run_dir)
    log_path = run_dir / "log.jsonl"
    if not log_path.exists():
        raise UserError(f"{run_dir} is not a training run folder (no log.jsonl)")
    records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return records, metrics


def _moving_average(values: list[float]) -> np.ndarray:
    w = max(1, len(values) // 8)
    return np.convolve(values, np.ones(w) / w, mode="valid")


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Training curves per run: train reward and loss (moving averages over ~1/8 of the
    run) and, when the run validated in the loop, validation MRR; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(r).name, read_run(r)[0]) for r in run_dirs]
    has_val = any("val_mrr" in rec for _, recs in runs for rec in recs)
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(15 if has_val else 11, 4))
    for name, records in runs:
        train = [r for r in records if "reward" in r and "loss" in r]
        for ax, key in zip(axes[:2], ("reward", "loss"), strict=True):
            if train:
                smooth = _moving_average([r[key] for r in train])
                ax.plot([r["step"] for r in train][len(train) - len(smooth) :], smooth, label=name)
        if has_val:
            val = [(r["step"], r["val_mrr"]) for r in records if "val_mrr" in r]
            if val:
                axes[2].plot(*zip(*val, strict=True), marker="o", label=name)
    axes[0].set(
        xlabel="optimizer step",
        ylabel="train reward (moving avg)",
        title="train reward: 1 - mean pi(ground truth)",
    )
    axes[1].set(xlabel="optimizer step", ylabel="train loss (moving avg)", title="train loss")
    if has_val:
        axes[2].set(xlabel="optimizer step", ylabel="validation MRR x100", title="validation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


REPORT_COLUMNS = (
    ("val_mrr_retrieval", "retrieval order"),
    ("val_mrr_zero_shot", "zero-shot"),
    ("val_mrr", "tuned"),
    ("val_mrr_zero_shot_fused", "zero-shot fused"),
    ("val_mrr_fused", "tuned fused"),
)


def runs_table(run_dirs: Sequence[Path]) -> str:
    """A markdown table of the runs' held-out MRR (x100) and training wall time."""
    head = (
        "| run | algo | signals | steps x batch | "
        + " | ".join(c for _, c in REPORT_COLUMNS)
        + " | train s |"
    )
    lines = [head, "|" + " --- |" * (len(REPORT_COLUMNS) + 5)]
    for run in run_dirs:
        _, m = read_run(run)
        if not m:
            continue
        cells = [f"{m[k]:.2f}" if k in m else "—" for k, _ in REPORT_COLUMNS]
        options = Path(run) / "options.json"
        batch = json.loads(options.read_text())["batch_size"] if options.exists() else "?"
        lines.append(
            f"| {Path(run).name} | {m['algo']} | {'yes' if m['show_signals'] else 'no'} | "
            f"{m['steps']} x {batch} | " + " | ".join(cells) + f" | {m['train_seconds']} |"
        )
    return "\n".join(lines)


def runs_deltas(run_dirs: Sequence[Path], baselines: Sequence[str] = ()) -> str:
    """Paired differences on the same validation users (MRR x100, bootstrap 95% interval):
    the ranker alone tuned vs zero-shot; fused with the retrieval score at the run's
    `fusion_alpha`, tuned vs zero-shot and vs the retrieval order; and the tuned fused
    ranking vs each classical recommender in `baselines` (e.g. lightfm, transitions) on
    those users."""
    from recsys.gate import compare

    def fmt(a: dict, b: dict) -> str:
        _, d, lo, hi = compare(a, b)
        return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    heads = ["tuned − zero-shot", "tuned fused − zero-shot fused", "tuned fused − retrieval"]
    heads += [f"tuned fused − {b}" for b in baselines]
    lines = ["| run | users | " + " | ".join(heads) + " |", "|" + " --- |" * (len(heads) + 2)]
    for run in run_dirs:
        _, m = read_run(run)
        if not m:
            continue
        key = f"rr_fused@{m.get('fusion_alpha')}"
        zero = json.loads((Path(run) / "zero_shot.json").read_text())
        tuned_path = Path(run) / "tuned_fused.json"
        tuned = json.loads(tuned_path.read_text()) if tuned_path.exists() else {}
        alone = m.get("val_rr_ranker_alone", m["val_rr"])
        fused = tuned.get(key)
        cells = [
            fmt(alone, zero["rr"]),
            fmt(fused, zero[key]) if fused and key in zero else "—",
            fmt(fused, m["val_rr_retrieval"]) if fused else "—",
        ]
        for name in baselines:
            rr = baseline_rr(m["task"], name, set(m["val_rr"]))
            cells.append(fmt(fused, rr) if fused else "—")
        lines.append(f"| {Path(run).name} | {len(m['val_rr'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@functools.cache
def _baseline_episode_rr(task: str, name: str) -> dict[str, float]:
    from recsys.settings import get_settings

    eps = task_episodes(task, get_settings().data_dir, signal=name)
    return reciprocal_ranks(retrieval_orders(eps), eps)


def baseline_rr(task: str, name: str, users: set[str]) -> dict[str, float]:
    """Per-user reciprocal rank of classical recommender `name`'s order on the task's
    instances (the harness's, seed 7), for `users` only."""
    return {u: r for u, r in _baseline_episode_rr(task, name).items() if u in users}
