#!/usr/bin/env bash
# README command two: create the virtualenv, install gpt_jax with its test extras and libtpu
# (for the TPU dry-run tests; no TPU needed), run the suite.
# Extra arguments go to pytest, e.g. launch/test.sh -k sharding
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/setup_venv.sh
source "$repo/launch/setup_venv.sh" test,tpu
cd "$repo"
exec python -m pytest "$@"
