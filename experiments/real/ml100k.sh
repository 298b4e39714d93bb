#!/usr/bin/env bash
# MovieLens-100K comparison: prepares runs/data/ml100k{,_ctr}, runs every available model over
# 3 seeds under the ranking and ctr protocols, writes experiments/results/ml100k.md.
#   experiments/real/ml100k.sh [--raw DIR] [--seeds 0 1 2] [--epochs 3] [--models DIN SEMINAR ...] [--jobs 2]
# --jobs 2: two one-thread processes on disjoint model groups of similar cost (2-core machines).
# Resumable: runs whose metrics.json exists are skipped. Options: see ml100k.py --help.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export WANDB_MODE="${WANDB_MODE:-disabled}"
exec "$PY" experiments/real/ml100k.py "$@"
