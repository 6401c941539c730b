#!/usr/bin/env bash
# Thin wrapper: run the GPU check (scripts/gpu_check.py) from anywhere with the python on PATH
# (or $PYTHON). Examples:
#   scripts/gpu_check.sh --data data/cifar-10-python.tar.gz --out runs/gpu_check   # one GPU, <= 8 min
#   scripts/gpu_check.sh --tiny --out /tmp/gpu_check                               # CPU smoke run
# The summary is OUT/gpu.md; exit status 0 = every step passed.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
