"""Which fusion weight serves a model best on a production index's requests, chosen on one
half of the users and tested once on the other (docs/results/production-replay, plan 4).

    python benchmarks/replay_weight_probe.py --episodes game-heldout-cut1.jsonl \
        --model models/hybrid-rec-game-dagger2 --weights 0 1 2 5 10 --card-weight 5 \
        --out var/weight-probe --tag games

Splits the episode file (`recsys index-episodes --users heldout`) by user into a test half T
(`is_heldout(user, 11, 0.5)`, the halves plan 3 fixed) and a validation half V, replays V
with `recsys replay --episodes` at each weight (RECSYS_FUSION_ALPHA), chooses the weight with
the highest NDCG@10 on V (ties: the one closest to the card's weight), then replays T at the
chosen weight and the card's. Writes the replays under --out and
benchmarks/results/replay_weight_probe[-TAG].{json,md}: per weight NDCG@10 and MRR on V;
on T, each of the two minus the index's order and chosen minus card (paired bootstrap 95%
intervals, seed 7; per-request NDCG@10 from the reports' reciprocal ranks: one relevant
item, so NDCG@10 = 1 / log2(rank + 1) within the top 10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ranking.rl.episodes import read_episodes, split_by_user, write_episodes  # noqa: E402
from recsys.stats import bootstrap_mean  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HALF_SEED = 11  # plan 3's halves: a salt of its own, not the held-out rule's 7


def split_halves(episodes_file: Path, out: Path) -> tuple[Path, Path]:
    """(validation file, test file) under `out`, the test half by `is_heldout(user, 11, 0.5)`."""
    # split_by_user's side of the hash below 0.5 is is_heldout(user, 11, 0.5): the test half
    valid, test = split_by_user(read_episodes(episodes_file), 0.5, HALF_SEED)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "valid.jsonl", out / "test.jsonl"
    for path, part in zip(paths, (valid, test), strict=True):
        write_episodes(path, part)
    return paths


def replay(episodes: Path, model: str, weight: float, out: Path) -> dict:
    """The report of `recsys replay` of `episodes` with B = `model` fused at `weight`
    (reused when an earlier run of this probe left it)."""
    report = out / "report.json"
    if not report.exists():
        env = {**os.environ, "RECSYS_FUSION_ALPHA": str(weight)}
        recsys = str(Path(sys.executable).with_name("recsys"))
        cmd = [recsys, "replay", "--episodes", str(episodes), "--a", "retrieval", "--b", model,
               "--out", str(out), "--slate-draws", "0", "--no-progress"]  # fmt: skip
        subprocess.run(cmd, env=env, check=True)
    return json.loads(report.read_text())


def ndcg10(rr: np.ndarray) -> np.ndarray:
    """NDCG@10 of one relevant item from its reciprocal rank."""
    rank = np.where(rr > 0, 1.0 / np.maximum(rr, 1e-12), np.inf)
    return np.where(rank <= 10, 1.0 / np.log2(rank + 1.0), 0.0)


def interval(diff: np.ndarray) -> dict[str, float]:
    iv = bootstrap_mean(diff, seed=7)
    return {"n": len(diff), "mean": iv.mean, "low": iv.low, "high": iv.high}


def paired(a: dict, b: dict, side_a: str = "B", side_b: str = "B") -> dict[str, dict]:
    """Report a's `side_a` minus report b's `side_b` on the same requests, MRR and NDCG@10."""
    ra, rb = (np.asarray(r["per_request"][s]) for r, s in ((a, side_a), (b, side_b)))
    return {"mrr": interval(ra - rb), "ndcg@10": interval(ndcg10(ra) - ndcg10(rb))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 1, 2, 5, 10])
    parser.add_argument("--card-weight", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("var/weight-probe"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    valid, test = split_halves(args.episodes, args.out)
    on_valid = {w: replay(valid, args.model, w, args.out / f"valid-{w:g}") for w in args.weights}
    scores = {w: r["policies"]["B"]["ndcg@10"] for w, r in on_valid.items()}
    chosen = max(args.weights, key=lambda w: (scores[w], -abs(w - args.card_weight)))
    card = replay(test, args.model, args.card_weight, args.out / f"test-{args.card_weight:g}")
    pick = replay(test, args.model, chosen, args.out / f"test-{chosen:g}")
    result = {
        "command": "python benchmarks/replay_weight_probe.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "episodes": str(args.episodes),
        "requests": {"valid": on_valid[chosen]["n"], "test": pick["n"]},
        "valid": {f"{w:g}": r["policies"]["B"] for w, r in on_valid.items()},
        "valid_index_order": on_valid[chosen]["policies"]["A"],
        "chosen": chosen,
        "test": {
            "chosen - index order": paired(pick, pick, "B", "A"),
            "card - index order": paired(card, card, "B", "A"),
            "chosen - card": paired(pick, card),
        },
    }
    name = "replay_weight_probe" + (f"-{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(res: dict) -> str:
    def fmt(d: dict[str, float]) -> str:
        return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    lines = [
        f"Fusion weight of `{res['model']}` on `{res['episodes']}`; command: `{res['command']}`",
        "",
        f"Validation half ({res['requests']['valid']} requests): NDCG@10 / MRR of B",
        "",
        "| weight | NDCG@10 | MRR |",
        "| --- | ---: | ---: |",
    ]
    for w, p in res["valid"].items():
        mark = " (chosen)" if float(w) == res["chosen"] else ""
        lines.append(f"| {w}{mark} | {p['ndcg@10']:.4f} | {p['mrr']:.4f} |")
    lines += ["", f"Test half ({res['requests']['test']} requests), paired:", "",
              "| comparison | NDCG@10 | MRR |", "| --- | --- | --- |"]  # fmt: skip
    for name, d in res["test"].items():
        lines.append(f"| {name} | {fmt(d['ndcg@10'])} | {fmt(d['mrr'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
