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
# bytecode compiles: a fresh test venv in about a minute instead of pip's 3 to 4). It comes
# from PyPI into the venv itself. uv reads no pip configuration, so it is handed the package
# sources and constraints this machine set up for pip (its environment variables, else its
# config files: local indexes, wheels on disk, a machine-wide constraints file) and picks
# the best match across them, as pip does. Bytecode is compiled at install, as pip does:
# where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile jax, torch and
# the rest from source at each start.
if [ ! -x "$venv/bin/uv" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$repo/launch/constraints.txt" uv 2>&1 | grep -v '^WARNING: Location' || true
fi
pip_config="$("$venv/bin/python" -m pip config list 2>/dev/null || true)"
pip_setting() {  # pip's value of option $1: its environment variable, else its config files
  local variable
  variable="PIP_$(tr 'a-z-' 'A-Z_' <<< "$1")"
  echo "${!variable:-$(sed -n "s/^global\.$1='\(.*\)'\$/\1/p" <<< "$pip_config" | tail -1)}"
}
# The exact versions we test with (launch/constraints.txt); pyproject.toml keeps ranges.
sources=(-c "$repo/launch/constraints.txt" --index-strategy unsafe-best-match)
# (Word splitting wanted: each setting is a list of paths or URLs.)
for file in $(pip_setting constraint); do sources+=(-c "$file"); done
for url in $(pip_setting extra-index-url); do sources+=(--index "$url"); done
for url in $(pip_setting index-url); do sources+=(--default-index "$url"); done
for place in $(pip_setting find-links); do sources+=(--find-links "$place"); done
# setuptools warns at every editable install of a package that maps a folder into it (our
# configs/ becomes gpt_jax.configs) that same-named folders in the working directory win
# imports: no news for this checkout, so that one warning is filtered where it is raised.
PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" \
  "$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" \
  "${sources[@]}" -e "$spec"
"$venv/bin/python" -c 'import gpt_jax' || { echo "[setup] install failed" >&2; exit 1; }
export PATH="$venv/bin:$PATH"
