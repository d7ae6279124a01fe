#!/usr/bin/env bash
# Cross-fitted choice among every served configuration measured on the held-out users
# (docs/RESULTS.md 0l): no LM is run, only the committed per-instance results are read.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=docs/results D=docs/results/crossfit-configs
MOVIE=(
  $R/bagging/rec-movie-committee-over-bag5.json $R/bagging/rec-movie-committee-over-text-bag5.json
  $R/abstain/committee-over-bag5-abstain5-rec-movie.json $R/abstain/committee-served5-abstain5-rec-movie.json
  $R/committee/committee-served5-rec-movie.json $R/committee/committee3-served5-rec-movie.json
  $R/committee/sweep-committee-rec-movie.json $R/portable/rl2-served10-rec-movie.json
  $R/text-features/dagger-served5-over-text-rec-movie.json $R/heldout/sweep-rldagrr-heldout-rec-movie.json
)
GAME=(
  $R/bagging/rec-game-committee-over-bag5.json $R/bagging/rec-game-committee-over-text-bag5.json
  $R/bagging/rec-game-dagger2-over-bag5.json $R/bagging/rec-game-dagger2-over-text-bag5.json
  $R/abstain/committee-over-text-bag5-abstain5-rec-game.json $R/abstain/dag2-over-text-bag5-abstain5-rec-game.json
  $R/abstain/dag2-served5-over-text-abstain5-rec-game.json $R/abstain/dag2-served5-over-text-rec-game.json
  $R/portable/dag2-served5-rec-game.json $R/committee/committee-served5-rec-game.json
)
recsys eval-crossfit "${MOVIE[@]}" --task rec-movie --out $D/served-rec-movie.json
recsys eval-crossfit "${GAME[@]}" --task rec-game --out $D/served-rec-game.json
# the same with the classical rankers among the choices: would the procedure pick the LM stage?
recsys eval-crossfit "${MOVIE[@]}" $R/bagging/rec-movie-lambdamart-bag5.json $R/bagging/rec-movie-lambdamart-text-bag5.json --task rec-movie --out $D/any-rec-movie.json
recsys eval-crossfit "${GAME[@]}" $R/bagging/rec-game-lambdamart-bag5.json $R/bagging/rec-game-lambdamart-text-bag5.json --task rec-game --out $D/any-rec-game.json
for t in movie game; do
  recsys eval-diff $D/served-rec-$t.json $D/any-rec-$t.json $R/bagging/rec-$t-lambdamart-bag5.json
  recsys eval-diff $D/served-rec-$t.json $R/bagging/rec-$t-lambdamart-text-bag5.json
done
