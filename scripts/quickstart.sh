#!/usr/bin/env bash
# Set up, generate a small Navier-Stokes dataset, and train the quickstart job: 2 workers, ZeRO-2, CPU,
# local Ray, file:// storage under ./runs, and the embedded MLflow store (runs/mlflow.db).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0
data=runs/data/navier-stokes-32
if [ ! -f "$data/train/manifest.json" ] || [ ! -f "$data/val/manifest.json" ]; then
  sciscale data generate navier-stokes --out "$data" --n-train 96 --n-val 16 --resolution 32 --seed 0
fi
sciscale launch examples/quickstart.yaml "$@"
