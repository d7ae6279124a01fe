"""Does a stronger LM alone make a better served ranking? Every trained hybrid measured both
alone and served (fused with LambdaMART at the weight 10 most of them were first served
with) on the same held-out users, from the committed results files; no model is run.

Per model and task, on the instances the three files share: the LM alone's MRR, the
served MRR, served - LambdaMART (paired bootstrap 95% interval, `recsys eval-diff`'s), the
per-request correlation of the LM's and LambdaMART's reciprocal ranks (how alike the two
rankers are) and the *oracle switch*: the mean of max(RR_LM, RR_LambdaMART) per request
minus LambdaMART's MRR, the most any per-request choice between the two rankers could
add (an upper bound on what the LM knows that LambdaMART lacks, at the target's rank).

    python benchmarks/served_vs_alone.py   # writes benchmarks/results/served_vs_alone.{json,md}
                                           # and docs/served_vs_alone.png

Each served file is paired with the LambdaMART fit it fused with (the results record its
score digest since 2026-12-06; the rec-movie fit is the same in every checkout, the older
rec-game files fused with the first fit, docs/results/heldout/lambdamart.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from eval_files import rr_by_instance, run_of  # benchmarks/ is on sys.path
from one_row import write_rows

H, C, P = "docs/results/heldout", "docs/results/committee", "docs/results/portable"
LTR = {"rec-movie": f"{H}/lambdamart.json", "rec-game": f"{H}/lambdamart.json"}
PORTABLE_LTR = f"{P}/lambdamart.json"
AT10 = "incremental+fusion@10"

# (task, model, LM alone file, served file, served run's ranker name, LambdaMART file)
PAIRS: list[tuple[str, str, str, str, str, str]] = [
    ("rec-movie", "supervised", f"{H}/hybrid-alone-rec-movie.json",
     f"{H}/hybrid-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "RL", f"{H}/hybrid-rl-alone-rec-movie.json",
     f"{H}/hybrid-rl-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "RL2", f"{H}/hybrid-rl2-alone-rec-movie.json",
     f"{H}/hybrid-rl2-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "RL3", f"{H}/hybrid-rl3-alone-rec-movie.json",
     f"{H}/hybrid-rl3-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "text vectors", f"{H}/hybrid-text-alone-rec-movie.json",
     f"{H}/hybrid-text-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "dagger", f"{H}/hybrid-rldagrr-alone-rec-movie.json",
     f"{H}/sweep-rldagrr-heldout-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "dag2", f"{H}/hybrid-dag2-alone-rec-movie.json",
     f"{H}/hybrid-dag2-served10-rec-movie.json", AT10, LTR["rec-movie"]),
    ("rec-movie", "committee", f"{C}/committee-alone-rec-movie.json",
     f"{C}/sweep-committee-rec-movie.json", AT10, PORTABLE_LTR),
    ("rec-game", "supervised", f"{H}/hybrid-alone-rec-game.json",
     f"{H}/hybrid-served10-rec-game.json", AT10, LTR["rec-game"]),
    ("rec-game", "RL", f"{H}/hybrid-rl-alone-rec-game.json",
     f"{H}/hybrid-rl-served10-rec-game-fresh.json", AT10, LTR["rec-game"]),
    ("rec-game", "RL2", f"{H}/hybrid-rl2-alone-rec-game.json",
     f"{H}/hybrid-rl2-served10-rec-game.json", AT10, LTR["rec-game"]),
    ("rec-game", "text vectors", f"{H}/hybrid-text-alone-rec-game.json",
     f"{H}/hybrid-text-served10-rec-game.json", AT10, LTR["rec-game"]),
    ("rec-game", "H200 RL", f"{H}/hybrid-gpu-alone-rec-game.json",
     f"{H}/hybrid-gpu-served10-rec-game.json", AT10, LTR["rec-game"]),
    ("rec-game", "dagger", f"{H}/hybrid-rldagrr-alone-rec-game.json",
     f"{H}/sweep-rldagrr-heldout-rec-game.json", AT10, LTR["rec-game"]),
    ("rec-game", "dagger2", f"{H}/hybrid-dag2-alone-rec-game.json",
     f"{H}/sweep-dag2-heldout-rec-game.json", AT10, LTR["rec-game"]),
]  # fmt: skip


# classical rankers on the same users, for scale: how alike LambdaMART they are and what an
# oracle switch between them and LambdaMART could add (none is served fused)
REFERENCES = ("random", "popularity", "lightfm", "transitions", "ensemble")


def measure(task: str, model: str, alone: str, served: str, ranker: str, ltr: str) -> dict:
    from recsys.eval.compare import paired

    runs = {"alone": run_of(alone, task), "served": run_of(served, task, ranker),
            "ltr": run_of(ltr, task, "lambdamart")}  # fmt: skip
    if runs["served"]["info"].get("fusion_signal_sha256") not in (
        None, runs["ltr"]["info"].get("scores_sha256"),
    ):  # fmt: skip
        raise SystemExit(f"{served}: fused with another LambdaMART fit than {ltr}'s")
    rr = {k: rr_by_instance(r) for k, r in runs.items()}
    ids = sorted(set(rr["alone"]) & set(rr["served"]) & set(rr["ltr"]))
    lm, srv, base = (np.array([rr[k][i] for i in ids]) for k in ("alone", "served", "ltr"))
    diff = paired(runs["served"], runs["ltr"])
    return {
        "task": task, "model": model, "n": len(ids), "alone": 100 * lm.mean(),
        "served": 100 * srv.mean(), "lambdamart": 100 * base.mean(),
        "served_minus_lambdamart": 100 * diff.diff, "low": 100 * diff.low,
        "high": 100 * diff.high, "rr_correlation": float(np.corrcoef(lm, base)[0, 1]),
        "lm_wins": int((lm > base).sum()), "lambdamart_wins": int((lm < base).sum()),
        "oracle_switch_gain": 100 * float(np.maximum(lm, base).mean() - base.mean()),
        "files": {"alone": alone, "served": f"{served} ({ranker})", "lambdamart": ltr},
    }  # fmt: skip


def reference(task: str, name: str, ltr: str) -> dict:
    """A classical ranker's row: alone, correlation and oracle switch; nothing served."""
    a, b = (
        rr_by_instance(run_of(f"{H}/{name}.json", task, name)),
        rr_by_instance(run_of(ltr, task, "lambdamart")),
    )
    ids = sorted(set(a) & set(b))
    x, y = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    return {
        "task": task, "model": f"({name})", "n": len(ids), "alone": 100 * x.mean(),
        "lambdamart": 100 * y.mean(), "rr_correlation": float(np.corrcoef(x, y)[0, 1]),
        "lm_wins": int((x > y).sum()), "lambdamart_wins": int((x < y).sum()),
        "oracle_switch_gain": 100 * float(np.maximum(x, y).mean() - y.mean()),
    }  # fmt: skip


def row_cells(r: dict) -> list[str]:
    served = "served" in r
    return [
        r["task"], r["model"], str(r["n"]), f"{r['alone']:.2f}",
        f"{r['served']:.2f}" if served else "",
        f"{r['lambdamart']:.2f}",
        f"{r['served_minus_lambdamart']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
        if served else "",
        f"{r['rr_correlation']:.2f}", f"{r['lm_wins']} / {r['lambdamart_wins']}",
        f"+{r['oracle_switch_gain']:.2f}",
    ]  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = [r for r in rows if r["task"] == task]
        x = [r["alone"] for r in sub]
        y = [r["served_minus_lambdamart"] for r in sub]
        err = [[r["served_minus_lambdamart"] - r["low"] for r in sub],
               [r["high"] - r["served_minus_lambdamart"] for r in sub]]  # fmt: skip
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label="served - LambdaMART (95% CI)")
        for r in sub:
            ax.annotate(r["model"], (r["alone"], r["served_minus_lambdamart"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.axhline(2.0, ls="--", color="grey", lw=1, label="issue 15 goal (+2)")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.axvline(sub[0]["lambdamart"], ls=":", color="tab:red", lw=1, label="LambdaMART alone")
        ax.set(title=f"{task}: {sub[0]['n']} held-out users, served at weight 10",
               xlabel="LM alone, MRR x 100", ylabel="served - LambdaMART, MRR x 100")  # fmt: skip
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/served_vs_alone"))
    parser.add_argument("--plot", type=Path, default=Path("docs/served_vs_alone.png"))
    args = parser.parse_args()
    rows = [measure(*pair) for pair in PAIRS]
    refs = [reference(t, name, LTR[t]) for t in ("rec-movie", "rec-game") for name in REFERENCES]
    slopes = {}
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        fit = np.polyfit([r["alone"] for r in sub], [r["served_minus_lambdamart"] for r in sub], 1)
        slopes[task] = float(fit[0])
    header = ["task", "model", "n", "LM alone", "served @10", "LambdaMART",
              "served - LambdaMART [95% CI]", "corr(RR LM, RR LambdaMART)",
              "LM / LambdaMART wins", "oracle switch - LambdaMART"]  # fmt: skip
    table = [row_cells(r) for r in rows + refs]
    doc = {"rows": rows, "references": refs, "slope_per_alone_point": slopes}
    write_rows(args.out, doc, header, table)
    print("slope of served - LambdaMART per point of LM alone:",
          {k: round(v, 3) for k, v in slopes.items()})  # fmt: skip
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
