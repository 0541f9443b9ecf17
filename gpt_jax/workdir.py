"""A run's workdir: where it is (a local disk or a bucket) and what it holds.

    WORKDIR/
      checkpoints/<step>/      orbax checkpoints (gpt_jax.checkpoint)
      damaged_checkpoints/     unreadable checkpoints, set aside
      tokenizer.model          the tokenizer the run's ids belong to
      metrics.jsonl            one record per logged step and split (gpt_jax.report)
      tensorboard/             TensorBoard event files
      curves.png               loss, learning rate and validation metrics
      profile/                 a JAX profiler trace, when asked for
      summary.json             fine-tuning: best metrics, baseline, where the weights came from
      *.tsv                    fine-tuning: test predictions (GLUE submission files)

TPU pods need storage every host reaches, so a workdir may be a `gs://` URL.
`etils.epath` (which orbax uses too) gives one Path API over both; `gs://`
needs `gcsfs` (or TensorFlow) installed. Local strings stay plain local paths.
"""

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


def path(text) -> epath.Path:
  """`text` (a local path or a `gs://` URL) as an epath.Path."""
  return epath.Path(text)


def is_local(where) -> bool:
  """Whether `where` is on this machine's filesystem (not a bucket URL)."""
  return not str(where).startswith(('gs://', 's3://', 'az://', 'hf://'))


def check_workdir(workdir, bytes_needed: int = 0, process_index: int = 0) -> None:
  """Fails in one line, before any training, if `workdir` cannot be written or is too full."""
  workdir = path(workdir)
  probe = workdir / f'.write_test.{process_index}'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as error:
    raise UserError(f'workdir {workdir} is not writable ({error.strerror or error}); fix its '
                    'permissions or pass another --workdir') from None
  if not is_local(workdir):
    return  # a bucket reports no free space (disk_usage reads a local filesystem only)
  free = shutil.disk_usage(workdir).free
  if free < bytes_needed:
    raise UserError(f'workdir {workdir} has {free / 2**20:,.1f} MiB free but checkpoints of this '
                    f'model need {bytes_needed / 2**20:,.1f} MiB; free some space or pass '
                    'another --workdir')
