"""The field's code habits, enforced: ruff's layout and lint on the tree, mypy on gpt_jax/.

The same checks run before each commit with `pre-commit install` (.pre-commit-config.yaml);
their configuration is in pyproject.toml.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ['gpt_jax', 'tests', 'benchmarks', 'configs']


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize(
  'command',
  [('ruff', 'format', '--check', *CHECKED), ('ruff', 'check', *CHECKED), ('mypy',)],
  ids=['ruff-format', 'ruff-check', 'mypy'],
)
def test_the_tree_passes(command):
  result = _run(*command)
  assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
