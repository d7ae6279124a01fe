#!/usr/bin/env bash
# The second plan (README.md): the rec-movie committee of three.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=docs/results/committee
E=".venv/bin/recsys eval"
export RECSYS_TORCH_THREADS=2
$E --task rec-movie --ranker incremental --model models/hybrid-rec-movie-dagger-b --fusion-alpha 0 --users heldout --out $R/dagger-b-alone-rec-movie.json
$E --task rec-movie --ranker incremental --model models/committee3-rec-movie --fusion-alpha 0 --users heldout --out $R/committee3-alone-rec-movie.json
$E --task rec-movie --ranker incremental --model models/committee3-rec-movie --fusion-alpha 5 --fusion-signal lambdamart --users heldout --out $R/committee3-served5-rec-movie.json
