#!/usr/bin/env bash
# README command two: create the virtualenv, install gpt_jax with its test extras, run the suite.
# Extra arguments go to pytest, e.g. launch/test.sh -k sharding
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/setup_venv.sh
source "$repo/launch/setup_venv.sh" test
cd "$repo"
exec python -m pytest "$@"
