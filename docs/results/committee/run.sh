#!/usr/bin/env bash
# The committee experiment (docs/results/committee/README.md); LambdaMART from the fit cache
# docs/results/portable/run.sh filled (the same build and log).
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=docs/results/committee
E=".venv/bin/recsys eval"
export RECSYS_TORCH_THREADS=2
for t in movie game; do
  $E --task rec-$t --ranker incremental --model models/committee-rec-$t --fusion-alpha 0 --users heldout --out $R/committee-alone-rec-$t.json
  $E --task rec-$t --ranker incremental --model models/committee-rec-$t --fusion-alpha 5 --fusion-signal lambdamart --users heldout --out $R/committee-served5-rec-$t.json
done
# diagnosis only (not the result): the served weight swept
for t in movie game; do
  $E --task rec-$t --ranker incremental --model models/committee-rec-$t --fusion-alpha 2 --fusion-alpha 3 --fusion-alpha 10 --fusion-alpha 20 --fusion-signal lambdamart --users heldout --out $R/sweep-committee-rec-$t.json
done
