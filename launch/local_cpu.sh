#!/usr/bin/env bash
# README command one: the smoke run on this machine's CPU, offline.
# Creates the virtualenv, then pretrains the tiny config.
# Usage: launch/local_cpu.sh [WORKDIR]   (default: workdirs/local_cpu)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/setup_venv.sh
source "$repo/launch/setup_venv.sh"
cd "$repo"
workdir="${1:-$repo/workdirs/local_cpu}"
mkdir -p "$workdir"

echo "[1/1] pretraining configs/tiny.py in $workdir"
gpt-jax pretrain --config configs/tiny.py --workdir "$workdir/pretrain" \
  --config.data.text_file="$repo/README.md" --config.model.vocab_size=256
