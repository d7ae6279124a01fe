#!/usr/bin/env bash
# Re-measure the rows a fresh clone's portable LightFM build changes (docs/results/portable/README.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=docs/results/portable
E=".venv/bin/recsys eval"
export RECSYS_TORCH_THREADS=2
$E --task rec-movie --task rec-game --ranker lambdamart --users heldout --out $R/lambdamart.json
$E --task rec-game --ranker incremental --model models/hybrid-rec-game-dagger2 --fusion-alpha 5 --fusion-signal lambdamart --users heldout --out $R/dag2-served5-rec-game.json
$E --task rec-movie --ranker incremental --model models/hybrid-rec-movie-rl2 --fusion-alpha 10 --fusion-signal lambdamart --users heldout --out $R/rl2-served10-rec-movie.json
$E --task rec-game --ranker first-stage --candidates retrieval --users heldout --out $R/first-stage-retrieval-rec-game.json
$E --task rec-game --ranker incremental --model models/hybrid-rec-game-dagger --fusion-alpha 3 --fusion-signal lambdamart --candidates retrieval --users heldout --out $R/dag-served3-retrieval-rec-game.json
$E --task rec-game --ranker incremental --model models/hybrid-rec-game-dagger2 --fusion-alpha 5 --fusion-signal lambdamart --candidates retrieval --users heldout --out $R/dag2-served5-retrieval-rec-game.json
$E --task rec-game --ranker lambdamart --candidates retrieval --users heldout --out $R/lambdamart-retrieval-rec-game.json
