"""`local_text`: a corpus from local files matched by a glob.

  *.txt    one document per file (the whole file).
  *.jsonl  one document per line: a JSON object whose "text" field holds it.

Files must be UTF-8; invalid bytes are replaced by U+FFFD and counted in one
warning per split. The builder config's name is a hash of the matched paths,
their sizes and modification times, so editing a file prepares a new dataset.
"""

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from gpt_jax.data.builders import text_corpus
from gpt_jax.errors import UserError, warn

SUFFIXES = ('.txt', '.jsonl')


@dataclasses.dataclass
class LocalTextConfig(text_corpus.TextCorpusConfig):
  root: str = ''  # the files' common directory; keys are paths relative to it
  files: tuple[str, ...] = ()


def find_files(pattern: str) -> list[Path]:
  """The .txt/.jsonl files a glob (or a directory, searched recursively) names."""
  if not pattern:
    raise UserError('data.corpus=local_text needs --config.data.text_glob=GLOB '
                    '(e.g. "books/*.txt" or a directory)')
  expanded = os.path.expanduser(pattern)
  if os.path.isdir(expanded):
    expanded = os.path.join(expanded, '**', '*')
  matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
  if not matches:
    if not glob.has_magic(pattern):
      raise UserError(f'data.text_glob={pattern!r}: no such file or directory')
    raise UserError(f'data.text_glob={pattern!r} matches no files')
  files = [p for p in matches if p.suffix in SUFFIXES]
  if not files:
    raise UserError(f'data.text_glob={pattern!r} matches {len(matches)} files but none ends in '
                    f'{" or ".join(SUFFIXES)}')
  return [p.resolve() for p in files]


def config(pattern: str, validation_fraction: float) -> LocalTextConfig:
  files = find_files(pattern)
  identity = hashlib.sha256()
  for path in files:
    stat = path.stat()
    identity.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  root = Path(os.path.commonpath([path.parent for path in files]))
  return LocalTextConfig(
      name=f'{identity.hexdigest()[:16]}-val{validation_fraction:g}', root=str(root),
      files=tuple(path.relative_to(root).as_posix() for path in files),
      validation_fraction=validation_fraction,
      description=f'{len(files)} files matching {pattern}')


def decode(raw: bytes) -> tuple[str, int]:
  """UTF-8 text with invalid bytes replaced by U+FFFD, and how many bytes were invalid."""
  text = raw.decode('utf-8', errors='surrogateescape')  # each invalid byte -> one lone surrogate
  invalid = sum(1 for char in text if '\udc80' <= char <= '\udcff')
  if invalid:
    text = text.encode('utf-8', errors='surrogateescape').decode('utf-8', errors='replace')
  return text, invalid


class LocalText(text_corpus.TextCorpus):
  """Local .txt files (one document each) and .jsonl files (one document per line)."""

  def _documents(self, wanted) -> Iterator[tuple[str, str]]:
    invalid_bytes, bad_documents, first_bad = 0, 0, None
    root = Path(self.builder_config.root)
    for name in self.builder_config.files:
      for key, raw in _raw_documents(root, name, wanted):
        text, invalid = decode(raw)
        if invalid:
          invalid_bytes, bad_documents = invalid_bytes + invalid, bad_documents + 1
          first_bad = first_bad or key
        if name.endswith('.jsonl'):
          text = _jsonl_text(text, key)
        yield key, text
    if invalid_bytes:
      warn(f'replaced {invalid_bytes:,} invalid UTF-8 bytes with U+FFFD in '
                       f'{bad_documents:,} documents (first: {first_bad})')


def _raw_documents(root: Path, name: str, wanted) -> Iterator[tuple[str, bytes]]:
  """(key, bytes) of the wanted documents of one file; keys are relative paths (and :line)."""
  if name.endswith('.txt'):
    if wanted(name):
      yield name, (root / name).read_bytes()
    return
  with open(root / name, 'rb') as lines:
    for number, line in enumerate(lines, 1):
      key = f'{name}:{number}'
      if line.strip() and wanted(key):
        yield key, line


def _jsonl_text(line: str, key: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    raise UserError(f'{key}: not a JSON object ({error.msg}); .jsonl files hold one '
                    '{"text": ...} object per line') from None
  if not isinstance(record, dict) or not isinstance(record.get('text'), str):
    raise UserError(f'{key}: no "text" string field; .jsonl files hold one {{"text": ...}} '
                    'object per line')
  # JSON escapes can spell lone surrogates, which are not text: replace them too.
  return record['text'].encode('utf-8', errors='replace').decode('utf-8')
