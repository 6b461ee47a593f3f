#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite: unit tests, then integration tests that start
# real Ray, DeepSpeed (CPU, gloo), SeaweedFS and MLflow servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export DS_ACCELERATOR=cpu RAY_DEDUP_LOGS=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# The local-stack tests start and stop machine-wide services and check that `down` leaves nothing behind:
# they run in a pytest process of their own, after the session services of the main run are gone.
STACK_TESTS=tests/integration/infra/test_infra_stack.py
python -m pytest tests -q -p no:cacheprovider --durations=40 --ignore="$STACK_TESTS" "$@"
python -m pytest "$STACK_TESTS" -q -p no:cacheprovider "$@"
