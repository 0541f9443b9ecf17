"""The offline default corpus: docstrings of the running Python's standard library.

About 1.5 MB of English technical prose that every machine with Python has, so
the README's first command needs no download and nothing third-party is
committed. One document per module: its docstring and those of its classes
and functions, in source order. Read with `ast` (nothing is imported);
test suites and site-packages are left out.
"""

import ast
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from gpt_jax.data.builders import text_corpus

_SKIPPED_DIRS = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}


def stdlib_root() -> Path:
  return Path(sysconfig.get_paths()['stdlib'])


def config(validation_fraction: float) -> text_corpus.TextCorpusConfig:
  """The corpus of this interpreter: its version is part of the name, as docstrings change."""
  version = f'{platform.python_implementation().lower()}{platform.python_version()}'
  return text_corpus.TextCorpusConfig(
    name=f'{version}-val{validation_fraction:g}',
    validation_fraction=validation_fraction,
    description=f'docstrings of {stdlib_root()}',
  )


def stdlib_modules() -> Iterator[tuple[str, Path]]:
  """(key, path) of every source file of the corpus, sorted; key: its path under stdlib_root()."""
  root = stdlib_root()
  for path in sorted(root.rglob('*.py')):
    if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
      yield path.relative_to(root).as_posix(), path


def docstrings(source: bytes) -> list[str]:
  """Module, class and function docstrings of one source file, each whole, in source order."""
  tree = ast.parse(source)
  nodes = [
    node
    for node in ast.walk(tree)
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
  ]
  nodes.sort(key=lambda node: getattr(node, 'lineno', 0))
  return [doc for doc in map(ast.get_docstring, nodes) if doc]


def module_docstrings(source: bytes) -> str:
  """Module, class and function docstrings of one source file, in source order."""
  return '\n\n'.join(docstrings(source))


class StdlibDocs(text_corpus.TextCorpus):
  """Docstrings of the Python standard library, one document per module."""

  def _documents(self, wanted) -> Iterator[tuple[str, str]]:
    for key, path in stdlib_modules():
      if not wanted(key):
        continue
      try:
        yield key, module_docstrings(path.read_bytes())
      except (SyntaxError, ValueError):  # e.g. files of a newer grammar; not prose anyway
        continue
