#!/usr/bin/env bash
# Create .venv and install sciscale with its dev extras. Idempotent: reinstalls only when pyproject.toml changed.
# CPU by default (torch 2.13.0, the CPU wheel on these machines); for GPUs see README "Install on GPU machines".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${SCISCALE_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.sciscale-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing into .venv (first time: a few minutes)"
  python -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
  python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v WARNING || true
  python -m pip install -q -e ".[dev]" 2>&1 | grep -v WARNING || true
  # torch-harmonics 0.8.0 is a source release that must build against the torch installed above (its wheels
  # are tied to other torch versions); an isolated build would pull a torch of its own
  python -m pip install -q setuptools wheel 2>&1 | grep -v WARNING || true
  python -m pip install -q --no-build-isolation --no-deps torch-harmonics==0.8.0 2>&1 | grep -v WARNING || true
  python -c "import torch, ray, deepspeed, mlflow, torch_harmonics, mace" 2>/dev/null \
    || { echo "[bootstrap] install failed: see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
