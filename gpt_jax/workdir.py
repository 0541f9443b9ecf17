"""A run's workdir: where it is (a local disk or a bucket) and what it holds.

    WORKDIR/
      checkpoints/<step>/      orbax checkpoints (gpt_jax.checkpoint)
      damaged_checkpoints/     unreadable checkpoints, set aside
      tokenizer.model          the tokenizer the run's ids belong to
      metrics.jsonl            one record per logged step and split (gpt_jax.report)
      tensorboard/             TensorBoard event files
      curves.png               loss, learning rate and validation metrics
      profile/                 a JAX profiler trace, when asked for
      lease.json               the run that writes here (gpt_jax.lease)
      skipped_batches.json     batches a loss-spike rollback skipped (gpt_jax.spike)
      summary.json             fine-tuning: best metrics, baseline, where the weights came from
      *.tsv                    fine-tuning: test predictions (GLUE submission files)

TPU pods need storage every host reaches, so any path a user gives (workdir,
data_dir, tokenizer, store, text files, task files, export directory) may be a
`gs://` URL. `etils.epath` (which orbax and TFDS use too) gives one Path API
over both; `gs://` goes through `gcsfs`. Local strings stay plain local paths
(with `~` expanded); `pathlib.Path("gs://b/x")` would silently be the local
path `gs:/b/x`.
"""

import errno
import os
import shutil

from etils import epath

from gpt_jax.errors import UserError

CHECKPOINTS_DIR = 'checkpoints'
DAMAGED_CHECKPOINTS_DIR = 'damaged_checkpoints'
TOKENIZER_FILE = 'tokenizer.model'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
CURVES_FILE = 'curves.png'
PROFILE_DIR = 'profile'
SUMMARY_FILE = 'summary.json'


_REMOTE_SCHEMES = ('gs://', 's3://', 'az://', 'hf://')


def path(text) -> epath.Path:
  """`text` (a local path or a bucket URL) as an epath.Path; `~` expands for local paths."""
  text = os.fspath(text)
  return epath.Path(text if text.startswith(_REMOTE_SCHEMES) else os.path.expanduser(text))


def is_local(where) -> bool:
  """Whether `where` is on this machine's filesystem (not a bucket URL)."""
  return not os.fspath(where).startswith(_REMOTE_SCHEMES)


def check_writable(where, what: str) -> epath.Path:
  """Fails in one line unless `where` (a directory, created if missing) can be written.

  A bucket must exist already: creating a directory in a missing bucket would
  otherwise try to create the bucket, or fail only at the first write after
  minutes of retries.
  """
  where = path(where)
  try:
    if not is_local(where):
      scheme, rest = os.fspath(where).split('://', 1)
      bucket = f'{scheme}://{rest.split("/", 1)[0]}'
      if not epath.Path(bucket).exists():
        raise UserError(
          f'{what} {where}: bucket {bucket} does not exist (or these credentials '
          'cannot see it); create it or fix the URL'
        )
    where.mkdir(parents=True, exist_ok=True)
    probe = where / f'.write_test.{os.getpid()}'
    probe.write_text('')
    probe.unlink()
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001 -- OSError locally; HTTP/auth errors for buckets
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = getattr(error, 'strerror', None) or message
    raise UserError(
      f'{what} {where} is not writable ({reason}); fix its permissions or '
      'credentials, or choose another path'
    ) from None
  return where


def check_workdir(workdir, bytes_needed: int = 0) -> None:
  """Fails in one line, before any training, if `workdir` cannot be written (a missing bucket
  included) or is too full."""
  workdir = check_writable(workdir, 'workdir')
  if not is_local(workdir):
    return  # a bucket reports no free space (disk_usage reads a local filesystem only)
  free = shutil.disk_usage(workdir).free
  if free < bytes_needed:
    raise UserError(
      f'workdir {workdir} has {free / 2**20:,.1f} MiB free but this run needs '
      f'{bytes_needed / 2**20:,.1f} MiB (checkpoint.keep + keep_best + one being written, '
      'and its logs); free some space, lower checkpoint.keep, or pass another --workdir'
    )


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
_WRITE_ERROR_TEXTS = ('No space left on device', 'Disk quota exceeded', 'Read-only file system')


def write_error_reason(error: BaseException | None) -> str | None:
  """'No space left on device' (or the like) if `error`, or what it was raised from, is a
  failed write of a full, read-only or failing disk; else None."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
      return os.strerror(error.errno)
    for text in _WRITE_ERROR_TEXTS:
      if text in str(error):  # tensorstore reports the OS error inside its own message
        return text
    error = error.__cause__ or error.__context__
  return None
