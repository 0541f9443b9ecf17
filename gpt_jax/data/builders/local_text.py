"""`local_text`: a corpus from local files matched by a glob.

  *.txt    one document per file (the whole file).
  *.jsonl  one document per line: a JSON object whose "text" field holds it.

The glob may name files in a bucket (gs://BUCKET/books/*.txt). Files must be
UTF-8; invalid bytes are replaced by U+FFFD and counted in one warning per
split. The builder config's name is a hash of the matched paths, their sizes
and modification times, so editing a file prepares a new dataset.
"""

import dataclasses
import glob
import hashlib
import json
import os
import posixpath
from collections.abc import Iterator

from etils import epath

from gpt_jax import workdir as workdir_lib
from gpt_jax.data.builders import text_corpus
from gpt_jax.errors import UserError, warn

SUFFIXES = ('.txt', '.jsonl')


@dataclasses.dataclass
class LocalTextConfig(text_corpus.TextCorpusConfig):
  root: str = ''  # the files' common directory; keys are paths relative to it
  files: tuple[str, ...] = ()


def find_files(pattern: str) -> list[epath.Path]:
  """The .txt/.jsonl files a glob (or a directory, searched recursively) names."""
  if not pattern:
    raise UserError(
      'data.corpus=local_text needs --config.data.text_glob=GLOB '
      '(e.g. "books/*.txt" or a directory)'
    )
  matches = sorted(
    _local_matches(pattern) if workdir_lib.is_local(pattern) else _bucket_matches(pattern), key=str
  )
  if not matches:
    if not glob.has_magic(pattern):
      raise UserError(f'data.text_glob={pattern!r}: no such file or directory')
    raise UserError(f'data.text_glob={pattern!r} matches no files')
  files = [p for p in matches if p.suffix in SUFFIXES]
  if not files:
    raise UserError(
      f'data.text_glob={pattern!r} matches {len(matches)} files but none ends in '
      f'{" or ".join(SUFFIXES)}'
    )
  return files


def _local_matches(pattern: str) -> list[epath.Path]:
  expanded = os.path.expanduser(pattern)
  if os.path.isdir(expanded):
    expanded = os.path.join(expanded, '**', '*')
  return [
    workdir_lib.path(os.path.realpath(p))
    for p in glob.glob(expanded, recursive=True)
    if os.path.isfile(p)
  ]


def _bucket_matches(pattern: str) -> list[epath.Path]:
  """Files in a bucket: under a "directory", or matching a glob (`**` included), one listing."""
  import fsspec  # pylint: disable=import-outside-toplevel

  filesystem, _ = fsspec.core.url_to_fs(pattern)
  scheme = pattern.split('://', 1)[0]
  found = (
    filesystem.find(pattern, detail=True)
    if filesystem.isdir(pattern)
    else filesystem.glob(pattern, detail=True)
  )
  return [
    workdir_lib.path(f'{scheme}://{name}') for name, info in found.items() if info['type'] == 'file'
  ]


def _common_root(files: list[epath.Path]) -> str:
  """The deepest directory holding every file (a bucket URL for files in a bucket)."""
  parents = [os.fspath(path.parent) for path in files]
  if all(workdir_lib.is_local(parent) for parent in parents):
    return os.path.commonpath(parents)
  scheme = parents[0].split('://', 1)[0]
  return f'{scheme}://' + posixpath.commonpath([p.split('://', 1)[1] for p in parents])


def config(pattern: str, validation_fraction: float) -> LocalTextConfig:
  files = find_files(pattern)
  identity = hashlib.sha256()
  for path in files:
    if workdir_lib.is_local(path):  # nanoseconds: an edit within the same second still counts
      stat = os.stat(path)
      size, mtime = stat.st_size, stat.st_mtime_ns
    else:
      stat = path.stat()
      size, mtime = stat.length, stat.mtime
    identity.update(f'{path}\0{size}\0{mtime}\n'.encode())
  root = _common_root(files)
  return LocalTextConfig(
    name=f'{identity.hexdigest()[:16]}-val{validation_fraction:g}',
    root=root,
    files=tuple(os.fspath(path)[len(root) + 1 :] for path in files),
    validation_fraction=validation_fraction,
    description=f'{len(files)} files matching {pattern}',
  )


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
    root = workdir_lib.path(self.builder_config.root)
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
      warn(
        f'replaced {invalid_bytes:,} invalid UTF-8 bytes with U+FFFD in '
        f'{bad_documents:,} documents (first: {first_bad})'
      )


def _raw_documents(root: epath.Path, name: str, wanted) -> Iterator[tuple[str, bytes]]:
  """(key, bytes) of the wanted documents of one file; keys are relative paths (and :line)."""
  if name.endswith('.txt'):
    if wanted(name):
      yield name, (root / name).read_bytes()
    return
  with (root / name).open('rb') as lines:
    for number, line in enumerate(lines, 1):
      key = f'{name}:{number}'
      if line.strip() and wanted(key):
        yield key, line


def _jsonl_text(line: str, key: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    raise UserError(
      f'{key}: not a JSON object ({error.msg}); .jsonl files hold one '
      '{"text": ...} object per line'
    ) from None
  if not isinstance(record, dict) or not isinstance(record.get('text'), str):
    raise UserError(
      f'{key}: no "text" string field; .jsonl files hold one {{"text": ...}} object per line'
    )
  # JSON escapes can spell lone surrogates, which are not text: replace them too.
  return record['text'].encode('utf-8', errors='replace').decode('utf-8')
