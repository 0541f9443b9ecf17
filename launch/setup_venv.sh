#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv and installs gpt_jax into it.
# Usage: source launch/setup_venv.sh [EXTRAS]   e.g. EXTRAS=test
# The venv lives in $GPT_JAX_VENV (default: .venv in the repository root).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GPT_JAX_VENV:-$repo/.venv}"
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
spec="$repo"
[ -n "$extras" ] && spec="${repo}[$extras]"
echo "[setup] installing gpt_jax${extras:+[$extras]} (quick when already installed)"
# uv installs the same pinned set as pip in a fraction of the time (parallel downloads and
# bytecode compiles: a fresh test venv in about 2 minutes instead of pip's 3 to 4). It comes
# from PyPI into the venv itself, and reads wheels lying on this machine's disk wherever pip
# is configured to (find-links) as pip would. Bytecode is compiled at install, as pip does:
# where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile jax, torch and
# the rest from source at each start.
if [ ! -x "$venv/bin/uv" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$repo/launch/constraints.txt" uv 2>&1 | grep -v '^WARNING: Location' || true
fi
find_links="${PIP_FIND_LINKS:-$("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true)}"
# The exact versions we test with (launch/constraints.txt); pyproject.toml keeps ranges.
# setuptools warns at every editable install of a package that maps a folder into it (our
# configs/ becomes gpt_jax.configs) that same-named folders in the working directory win
# imports: no news for this checkout, so that one warning is filtered where it is raised.
PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" UV_FIND_LINKS="$find_links" \
  "$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" \
  -c "$repo/launch/constraints.txt" -e "$spec"
"$venv/bin/python" -c 'import gpt_jax' || { echo "[setup] install failed" >&2; exit 1; }
export PATH="$venv/bin:$PATH"
