"""Workdir paths that may live on a local disk or in a bucket (`gs://...`).

TPU pods need storage every host reaches, so `--workdir` may be a `gs://`
URL. `etils.epath` (which orbax uses too) gives one Path API over both; `gs://`
needs `gcsfs` (or TensorFlow) installed. Local strings stay plain local paths.
"""

from etils import epath


def workdir_path(text) -> epath.Path:
  """`text` (a local path or a `gs://` URL) as an epath.Path."""
  return epath.Path(text)


def is_local(path) -> bool:
  """Whether `path` is on this machine's filesystem (not a bucket URL)."""
  return not str(path).startswith(('gs://', 's3://', 'az://', 'hf://'))
