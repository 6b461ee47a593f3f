#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite: unit tests, then integration tests that start
# real Ray, DeepSpeed (CPU, gloo), SeaweedFS and MLflow servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export DS_ACCELERATOR=cpu RAY_DEDUP_LOGS=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
python -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
