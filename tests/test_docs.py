"""The docs: the site builds with --strict, the CLI page is current, and user docs speak of the
product as it is (no development history)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from gpt_jax import cli_reference

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

# What development history looks like in prose: issue and session numbers, branches that are
# not in the repository, the rounds of work and the machines it ran on.
HISTORY = re.compile(
  r'\bissues? #?\d+|#\d{2,}\b|\bbranch(es)? `|-draft\b|\bthis (round|session|stop)\b'
  r'|\b(stop|session|round) \d+\b|\bwas lent\b|\bgit archive\b|\bmachine changed\b',
  re.IGNORECASE,
)


def _user_facing_files() -> list[Path]:
  return [
    ROOT / 'README.md',
    ROOT / 'CONTRIBUTING.md',
    *sorted((ROOT / 'docs').rglob('*.md')),
    *sorted((ROOT / 'gpt_jax').rglob('*.py')),
    *sorted((ROOT / 'configs').rglob('*.py')),
  ]


def test_history_finds_what_it_should_and_nothing_else():
  found = ['fixed in issue 18', 'branch `blas-draft`', 'measured this round', 'stop 23 failed']
  assert all(HISTORY.search(text) for text in found)
  assert not HISTORY.search('the 12 layers of round numbers; 2 issues with the data; step 23')


def test_user_docs_and_docstrings_carry_no_development_history():
  hits = [
    f'{path.relative_to(ROOT)}:{number}: {line.strip()}'
    for path in _user_facing_files()
    for number, line in enumerate(path.read_text().splitlines(), 1)
    if HISTORY.search(line)
  ]
  assert not hits, '\n'.join(hits)


def test_the_readme_is_short():
  lines = len((ROOT / 'README.md').read_text().splitlines())
  assert lines <= README_MAX_LINES, f'README.md has {lines} lines; move detail into docs/'


def test_the_cli_page_is_generated_from_the_parser():
  page = (ROOT / 'docs' / 'cli.md').read_text()
  assert page == cli_reference.page(), 'run: python -m gpt_jax.cli_reference docs/cli.md'
  for mode in ('pretrain', 'finetune', 'sample', 'eval', 'export'):
    assert f'## gpt-jax {mode}\n' in page


def test_the_site_builds_with_strict_checks(tmp_path):
  result = subprocess.run(
    [sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(tmp_path / 'site')],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'},  # Material's notice about its successor
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert (tmp_path / 'site' / 'api' / 'index.html').read_text().count('ModelConfig') > 1
