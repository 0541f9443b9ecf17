#!/usr/bin/env bash
# The whole GPU throughput measurement as one command, on a bare NVIDIA machine (H200 or any
# CUDA 12 GPU) with pip access, or offline from a folder of wheels:
#
#   bash benchmarks/gpu_h200.sh                      # installs what is missing, runs it all
#   WHEELS=/path/to/wheels bash benchmarks/gpu_h200.sh   # pip install --no-index from there
#   bash benchmarks/gpu_h200.sh --contenders flash_dropout,torch_compile --flag_ab ''
#
# Arguments go to benchmarks/accelerator_throughput.py. It makes a virtualenv ($VENV,
# default .venv-gpu) unless one is active, installs gpt_jax with its `gpu` extra (jax[cuda12])
# and a CUDA build of torch when they are missing, then runs every contender and XLA-flag A/B
# row (about 10 minutes on an H200) and writes benchmarks/results/accelerator_throughput.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  VENV="${VENV:-.venv-gpu}"
  [[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"
  PY="$VENV/bin/python"
else
  PY="$VIRTUAL_ENV/bin/python"
fi

pip_install() {
  if [[ -n "${WHEELS:-}" ]]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" "$@"
  else
    "$PY" -m pip install "$@"
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# One pip call for both, so its resolver picks CUDA libraries (nvidia-*) that jax[cuda12] and
# torch both accept. PyPI's Linux torch wheels are CUDA builds; a CPU-only torch is replaced.
if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null ||
  ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  pip_install --upgrade -e '.[gpu]' torch
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

exec "$PY" benchmarks/accelerator_throughput.py --out benchmarks/results "$@"
