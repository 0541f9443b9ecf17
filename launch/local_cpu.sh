#!/usr/bin/env bash
# README command one: the smoke run on this machine's CPU, offline.
# Creates the virtualenv, trains a BPE tokenizer on the offline default corpus (the
# docstrings of Python's standard library), tokenises the corpus once, then pretrains
# the tiny config on it.
# Usage: launch/local_cpu.sh [WORKDIR]   (default: workdirs/local_cpu)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/setup_venv.sh
source "$repo/launch/setup_venv.sh"
cd "$repo"
workdir="${1:-$repo/workdirs/local_cpu}"
mkdir -p "$workdir"

# The corpus (a TFDS dataset), tokenizer and token store; reused when the script reruns.
data=(--config.data.data_dir="$workdir/data")

echo "[1/3] training the tokenizer of configs/tiny.py on its corpus"
gpt-jax tokenizer --config configs/tiny.py "${data[@]}"
echo "[2/3] tokenising the corpus into a token store"
gpt-jax prepare --config configs/tiny.py "${data[@]}"
echo "[3/3] pretraining configs/tiny.py in $workdir/pretrain"
gpt-jax pretrain --config configs/tiny.py --workdir "$workdir/pretrain" "${data[@]}"
