"""Paths that may live on a local disk or in a bucket (`gs://...`).

TPU pods need storage every host reaches, so any path a user gives (workdir,
data_dir, tokenizer, store, text files, task files, export directory) may be a
`gs://` URL. `etils.epath` (which orbax and TFDS use too) gives one Path API over
both; `gs://` goes through `gcsfs`. Local strings stay plain local paths (with `~`
expanded); `pathlib.Path("gs://b/x")` would silently be the local path `gs:/b/x`.
"""

import os

from etils import epath

from gpt_jax.errors import UserError

_REMOTE_SCHEMES = ('gs://', 's3://', 'az://', 'hf://')


def as_path(text) -> epath.Path:
  """`text` (a local path or a bucket URL) as an epath.Path; `~` expands for local paths."""
  text = os.fspath(text)
  return epath.Path(text if text.startswith(_REMOTE_SCHEMES) else os.path.expanduser(text))


workdir_path = as_path  # the name the run code has always used


def is_local(path) -> bool:
  """Whether `path` is on this machine's filesystem (not a bucket URL)."""
  return not os.fspath(path).startswith(_REMOTE_SCHEMES)


def check_writable(path, what: str) -> epath.Path:
  """Fails in one line unless `path` (a directory, created if missing) can be written.

  A bucket must exist already: creating a directory in a missing bucket would
  otherwise try to create the bucket, or fail only at the first write after
  minutes of retries.
  """
  path = as_path(path)
  try:
    if not is_local(path):
      bucket = f'{os.fspath(path).split("://")[0]}://{_bucket(path)}'
      if not epath.Path(bucket).exists():
        raise UserError(f'{what} {path}: bucket {bucket} does not exist (or these credentials '
                        'cannot see it); create it or fix the URL')
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test.{os.getpid()}'
    probe.write_text('')
    probe.unlink()
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001 -- OSError locally; HTTP/auth errors for buckets
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = getattr(error, 'strerror', None) or message
    raise UserError(f'{what} {path} is not writable ({reason}); fix its permissions or '
                    'credentials, or choose another path') from None
  return path


def _bucket(path) -> str:
  return os.fspath(path).split('://', 1)[1].split('/', 1)[0]
