"""Markdown tables from evaluation results (the JSON `recsys eval --out` writes)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recsys.errors import UserError
from recsys.eval.harness import headline
from recsys.eval.tasks import ALL_TASKS


def _pct(metric: dict[str, float]) -> str:
    return f"{100 * metric['mean']:.2f} [{100 * metric['low']:.1f}, {100 * metric['high']:.1f}]"


def run_table(runs: Sequence[dict[str, Any]]) -> str:
    """One row per (task, ranker): n, MRR and NDCG@10 with 95% intervals, the rest as
    means, x 100; then invalid answers, fallbacks and speed."""
    head = (
        "| task | ranker | n | MRR [95% CI] | NDCG@1 | NDCG@5 | NDCG@10 [95% CI] | Hit@1 | "
        "Hit@5 | random MRR | invalid | fallback | wall s | req/s |"
    )
    lines = [head, "|" + " --- |" * 14]
    for r in runs:
        m = r["metrics"]
        lines.append(
            f"| {r['task']} | {r['ranker']} | {r['n']} | {_pct(m['mrr'])} | "
            f"{100 * m['ndcg@1']['mean']:.2f} | {100 * m['ndcg@5']['mean']:.2f} | "
            f"{_pct(m['ndcg@10'])} | {100 * m['hit@1']['mean']:.2f} | "
            f"{100 * m['hit@5']['mean']:.2f} | {100 * r['random_mrr']:.2f} | "
            f"{r['invalid_answers']} | {r['fallbacks']} | {r['wall_s']:.1f} | "
            f"{r['requests_per_s']:.1f} |"
        )
    return "\n".join(lines)


def read_results(path: str | Path) -> dict[str, Any]:
    """One `recsys eval --out` file (config and runs), or a UserError naming it."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
        if not isinstance(data["runs"], list):
            raise TypeError(f"'runs' is a {type(data['runs']).__name__}, not a list")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a `recsys eval --out` results file ({exc})") from None
    return data


def uncommitted_note(path: str | Path, results: dict[str, Any]) -> str | None:
    """A line when the results were measured with uncommitted code (their `config.code`,
    recsys.provenance): such a number may not reproduce from any commit. None for clean
    results and for files from before the field existed."""
    config = results.get("config")
    code = (config.get("code") if isinstance(config, dict) else None) or {}
    if not code.get("uncommitted_count"):
        return None
    listed = ", ".join(code.get("uncommitted", []))
    return (f"note: {path} was measured with {code['uncommitted_count']} uncommitted .py "
            f"file(s) on top of {str(code.get('commit'))[:12]} ({listed}); it may not "
            "reproduce from any commit")  # fmt: skip


def signal_notes(
    path_a: str | Path, results_a: dict[str, Any], path_b: str | Path, results_b: dict[str, Any]
) -> list[str]:
    """Lines for each task where A fused with a signal and B ran that signal as a ranker on
    the same instances, but B's scores differ from those A fused with (their recorded
    digests, recsys.eval.baselines.ScoreDigest): the pair then compares A with another fit
    of its signal than the one it used (a different data set, code or environment)."""
    config = results_a.get("config") or {}
    signal = config.get("fusion_signal")
    by_task = {r["task"]: r for r in results_b.get("runs", [])}
    notes = []
    for run in results_a.get("runs", []):
        other = by_task.get(run["task"])
        fused = (run.get("info") or {}).get("fusion_signal_sha256")
        scored = ((other or {}).get("info") or {}).get("scores_sha256")
        if not (fused and scored) or other["ranker"] != signal:
            continue
        same_instances = [r["id"] for r in run.get("instances", [])] == [
            r["id"] for r in other.get("instances", [])
        ]
        if same_instances and fused != scored:
            notes.append(
                f"note: {path_a} ({run['task']}, {run['ranker']}) fused with a {signal} "
                f"that scored these instances differently from the one in {path_b}; the "
                "difference includes the two fits' difference" + _kernel_hint(config, results_b)
            )
    return notes


def _kernel_hint(config_a: dict[str, Any], results_b: dict[str, Any]) -> str:
    """Why two fits of the same code and data may differ, when both files say: they were
    computed with other numeric kernels (recsys.provenance.numeric_kernels)."""
    kernels_a = config_a.get("kernels")
    kernels_b = (results_b.get("config") or {}).get("kernels")
    if not kernels_a or not kernels_b or kernels_a == kernels_b:
        return ""
    return (f" (computed with other numeric kernels: {'; '.join(kernels_a)} vs "
            f"{'; '.join(kernels_b)})")  # fmt: skip


def load_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return [run for path in paths for run in read_results(path)["runs"]]


def summary_table(runs: Sequence[dict[str, Any]], tasks: Sequence[str] | None = None) -> str:
    """Rankers x tasks, the headline number x 100 (MRR; nDCG@10 for passage-rerank),
    with n in parentheses when a run used a subset (--limit)."""
    tasks = list(tasks or [t for t in ALL_TASKS if any(r["task"] == t for r in runs)])
    rankers: dict[str, dict[str, str]] = {}
    for r in runs:
        label = r["ranker"]
        cell = f"{headline(r):.2f}"
        if "limit" in r.get("info", {}):
            cell += f" (n={r['n']})"
        rankers.setdefault(label, {})[r["task"]] = cell
    lines = ["| ranker | " + " | ".join(tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
    for name, cells in rankers.items():
        lines.append(f"| {name} | " + " | ".join(cells.get(t, "—") for t in tasks) + " |")
    return "\n".join(lines)


def plot_runs(runs: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One panel per task: the headline metric x 100 per ranker with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ALL_TASKS if any(r["task"] == t for r in runs)]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 1.2 + 0.45 * len(runs)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        rows = [r for r in runs if r["task"] == task]
        key = "ndcg@10" if task.startswith("passage-rerank") else "mrr"
        means = [100 * r["metrics"][key]["mean"] for r in rows]
        errors = [
            [m - 100 * r["metrics"][key]["low"] for m, r in zip(means, rows, strict=True)],
            [100 * r["metrics"][key]["high"] - m for m, r in zip(means, rows, strict=True)],
        ]
        labels = [f"{r['ranker']} (n={r['n']})" for r in rows]
        ax.barh(labels, means, xerr=errors, color="tab:blue", alpha=0.7, capsize=3)
        ax.axvline(100 * rows[0]["random_mrr"], color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{task}: {key.upper()} x 100 (dashed: random)", fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
