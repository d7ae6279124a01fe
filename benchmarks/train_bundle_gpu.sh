#!/usr/bin/env bash
# Train training bundles (ranking/rl/bundle.py) side by side on one CUDA machine, each for
# BUDGET seconds, and pack each trained model folder, its log and its throughput summary
# into OUT/NAME.tar.gz. A run is one line of RUNS: "NAME BUNDLE [bundle options...]".
#
#   RUNS=$'game gpu/rec-game --ce-weight 0.5\nmovie gpu/rec-movie' BUDGET=380 OUT=/tmp/out \
#       benchmarks/train_bundle_gpu.sh
#
# Bundles of one base may share its weights and tokenizer: a bundle folder without
# weights.pt / tokenizer/ takes them from the first bundle that has them (copied, so that
# only one copy has to travel to the machine).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
: "${RUNS:?one line per run: NAME BUNDLE [options]}" "${OUT:?folder for the results}"
BUDGET=${BUDGET:-300}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the same script here
WORK=${WORK:-/tmp/bundle-runs}
mkdir -p "$OUT" "$WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__,
"transformers", transformers.__version__, "peft", peft.__version__)'; } >"$OUT/machine.txt" 2>&1

shared=""
while read -r name bundle _; do
  [ -z "$name" ] && continue
  if [ -f "$bundle/weights.pt" ] && [ -z "$shared" ]; then shared=$bundle; fi
done <<<"$RUNS"
pids=()
while read -r name bundle opts; do
  [ -z "$name" ] && continue
  [ -f "$bundle/weights.pt" ] || cp "$shared/weights.pt" "$bundle/"
  [ -d "$bundle/tokenizer" ] || cp -r "$shared/tokenizer" "$bundle/"
  # a fresh run each call: each call is its own experiment (a run left in WORK would be
  # resumed with the plan it was saved with, not this call's budget)
  rm -rf "${WORK:?}/$name" "$WORK/$name.work"
  # shellcheck disable=SC2086
  python3 -m ranking.rl.bundle "$bundle" --out "$WORK/$name" --device "$DEVICE" \
    --budget-s "$BUDGET" $opts >"$WORK/$name.log" 2>&1 &
  pids+=($!)
done <<<"$RUNS"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
while read -r name _; do
  [ -z "$name" ] && continue
  cp "$WORK/$name.log" "$WORK/$name/train.log" 2>/dev/null
  cp "$WORK/$name.work/log.jsonl" "$WORK/$name/log.jsonl" 2>/dev/null
  rm -f "$WORK/$name/vectors.npy" "$WORK/$name/adapter/README.md"  # the bundle has them
  tar -czf "$OUT/$name.tar.gz" -C "$WORK" "$name" 2>/dev/null || tail -5 "$WORK/$name.log"
  tail -3 "$WORK/$name.log"
done <<<"$RUNS"
exit $status
