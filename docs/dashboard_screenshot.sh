#!/usr/bin/env bash
# Makes docs/dashboard.png from a real install: ml-100k up to 1998-04-01, a Celery worker
# on the local Redis, a nightly batch in two shards, a served API that simulated traffic
# calls, one loop turn (fine-tune, gate, replay), then headless Chromium (Debian's
# `chromium` package) photographs /dashboard. About 15 minutes on 2 cores.
#
#   docs/dashboard_screenshot.sh [DATA] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/movielens-100k}
WORK=${2:-$(mktemp -d)}
PORT=${PORT:-8765}
BIN=${BIN:-.venv/bin}
export RECSYS_VAR_DIR=$WORK RECSYS_DATABASE_URL=sqlite:///$WORK/recsys.db
export RECSYS_BROKER_URL=${RECSYS_BROKER_URL:-redis://127.0.0.1:6379/7}
export RECSYS_TASK_QUEUE=screenshot-$$ RECSYS_LOOP_SCHEDULE=off RECSYS_BATCH_SCHEDULE=off
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

$BIN/recsys ingest "$DATA" --until 1998-04-01 --no-progress
$BIN/celery -A jobs.celery_app worker --concurrency 1 --loglevel warning >"$WORK/worker.log" 2>&1 &
pids+=($!)
$BIN/recsys batch --shards 2 --limit-users 6
$BIN/python - <<'EOF'  # wait for the batch (index + two shards) to finish
import time
from recsys.db.engine import get_engine
from recsys.db.runs import recent_job_runs
while not any(r.kind == "batch-fanout" and r.status == "succeeded" for r in recent_job_runs(20, engine=get_engine())):
    time.sleep(5)
EOF
$BIN/recsys serve --port "$PORT" >"$WORK/serve.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 2; done
$BIN/recsys simulate "$DATA" --since 1998-04-01 --api "http://127.0.0.1:$PORT" \
    --users 24 --per-user 2 --no-progress
$BIN/python -c "
from jobs.tasks import improve_ranker
print(improve_ranker.delay(steps=4, min_requests=10, auto_promote=True).get(timeout=1800))"
$BIN/recsys status || true
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$WORK/chromium" --hide-scrollbars --window-size=1280,2400 \
    --screenshot=docs/dashboard.png "http://127.0.0.1:$PORT/dashboard" 2>"$WORK/chromium.log"
echo "written: docs/dashboard.png (work dir $WORK)"
