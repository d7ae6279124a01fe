"""Slices and pairs of `recsys replay --episodes` reports (docs/results/production-replay).

    python benchmarks/production_replay_slices.py --episodes game-heldout-cut1.jsonl \
        --report docs/results/production-replay/rec-game/report.json \
        [--versus docs/results/production-replay/rec-game-dagger2/report.json] [--tag TAG]

Prints and writes benchmarks/results/production_replay_slices[-TAG].{json,md}: B − A in MRR (the
per-request reciprocal ranks every replay report keeps) by the request's history length,
with paired bootstrap 95% intervals (seed 7); with `--versus`, report B minus the other
report's B on the same requests (both replays must have read the same episode file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranking.rl.episodes import read_episodes  # noqa: E402
from recsys.stats import bootstrap_mean  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SLICES = (("fewer than 5", 0, 5), ("5 to 19", 5, 20), ("20 or more", 20, 10**9))


def interval(diff: np.ndarray) -> dict[str, float]:
    iv = bootstrap_mean(diff, seed=7)
    return {"n": len(diff), "mean": iv.mean, "low": iv.low, "high": iv.high}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--versus", type=Path)
    parser.add_argument("--tag", default="", help="results file suffix")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    a, b = (np.asarray(report["per_request"][p]) for p in ("A", "B"))
    episodes = read_episodes(args.episodes)
    if len(episodes) != len(a):
        raise SystemExit(f"{args.episodes} has {len(episodes)} episodes, the report {len(a)}")
    history = np.array([len(e.request.history_ids or ()) for e in episodes])
    out = {"report": str(args.report), "b": report["b"], "a": report["a"], "slices": {}}
    for name, low, high in SLICES:
        mask = (history >= low) & (history < high)
        out["slices"][name] = interval(b[mask] - a[mask])
    if args.versus:
        other = json.loads(args.versus.read_text())
        paired = b - np.asarray(other["per_request"]["B"])
        out["versus"] = {"b": other["b"], "report": str(args.versus),
                         "difference": interval(paired)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "production_replay_slices" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(out, sys.argv[1:]))
    print(markdown(out, sys.argv[1:]))


def markdown(out: dict, argv: list[str]) -> str:
    def fmt(d: dict[str, float]) -> str:
        return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    rows = [f"| {name} | {d['n']} | {fmt(d)} |" for name, d in out["slices"].items()]
    text = (
        f"B = `{out['b']}` − A = `{out['a']}`, MRR, by history length; command: `python "
        f"benchmarks/production_replay_slices.py {' '.join(argv)}`\n\n"
        "| history items | requests | B − A, MRR |\n| --- | ---: | --- |\n" + "\n".join(rows) + "\n"
    )
    if "versus" in out:
        v = out["versus"]
        text += (f"\nB of `{out['report']}` − B of `{v['report']}` (`{v['b']}`), MRR, paired: "
                 f"{fmt(v['difference'])}\n")  # fmt: skip
    return text


if __name__ == "__main__":
    main()
