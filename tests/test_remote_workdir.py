"""A `gs://` workdir through the epath code paths, with the bucket faked offline.

`etils.epath.testing.mock_epath` reroutes every epath call; here each `gs://`
path goes to a directory under tmp_path, so the code takes its bucket branches
(staged logs, no free-space check, sentencepiece from bytes) without a network.
Orbax checkpoints are not covered: tensorstore talks to GCS itself; tests/test_gcs.py and
tests/test_gcs_pod.py run everything against a real GCS API on loopback.
"""

import json
import os
import string

import pytest
from etils.epath import testing as epath_testing
from helpers import tensorboard_scalars

from gpt_jax import checkpoint
from gpt_jax import workdir as workdir_lib
from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.report import RunLog
from gpt_jax.workdir import is_local
from gpt_jax.workdir import path as workdir_path


@pytest.fixture
def bucket(tmp_path):
  """Serves `gs://...` paths from tmp_path/bucket; returns that directory."""
  root = tmp_path / 'bucket'
  (root / 'b').mkdir(parents=True)  # the bucket gs://b exists

  def local(path):
    text = os.fspath(path)
    return str(root / text[len('gs://') :]) if text.startswith('gs://') else text

  def reroute(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def reroute_two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  one = (
    'exists',
    'glob',
    'isdir',
    'listdir',
    'makedirs',
    'mkdir',
    'open',
    'remove',
    'rmtree',
    'stat',
    'walk',
  )
  with epath_testing.mock_epath(
    **{name: reroute for name in one},
    **{name: reroute_two for name in ('copy', 'rename', 'replace')},
  ):
    yield root


def test_bucket_urls_keep_their_double_slash():
  # pathlib.Path('gs://b/run') would be 'gs:/b/run', a local relative path.
  assert str(workdir_path('gs://b/run') / 'tokenizer.model') == 'gs://b/run/tokenizer.model'
  assert not is_local('gs://b/run') and is_local('/tmp/run') and is_local('run')
  assert str(checkpoint._absolute('gs://b/run')) == 'gs://b/run'
  assert str(checkpoint._absolute('run')) == os.path.abspath('run')


def _steps(path):
  return [json.loads(line)['step'] for line in path.read_text().splitlines()]


def _loss_steps(directory) -> list[int]:
  return sorted(step for step, _ in tensorboard_scalars(directory)['train/loss'])


def test_run_log_stages_a_bucket_workdir_and_uploads_on_close(bucket, capsys):
  log = RunLog('gs://b/run', progress=False)
  for step in (10, 20, 30):
    log.scalars(step, {'loss': 4.0 - step / 10, 'learning_rate': 1e-3})
  assert not (bucket / 'b' / 'run' / 'metrics.jsonl').exists()  # a bucket cannot append
  log.close()
  assert _steps(bucket / 'b' / 'run' / 'metrics.jsonl') == [10, 20, 30]
  assert (bucket / 'b' / 'run' / 'curves.png').stat().st_size > 1000
  assert _loss_steps(bucket / 'b' / 'run' / 'tensorboard') == [10, 20, 30]

  # A resumed run starts from the bucket's records and forgets those past its checkpoint.
  log = RunLog('gs://b/run', progress=False)
  log.drop_after(20)
  for step in (30, 40):
    log.scalars(step, {'loss': 1.0, 'learning_rate': 1e-3})
  log.close()
  assert _steps(bucket / 'b' / 'run' / 'metrics.jsonl') == [10, 20, 30, 40]
  assert {30, 40} <= set(_loss_steps(bucket / 'b' / 'run' / 'tensorboard'))
  capsys.readouterr()


def test_drop_after_on_a_local_workdir_keeps_appending_after_the_kept_records(tmp_path):
  log = RunLog(tmp_path, progress=False)
  for step in (10, 20, 30):
    log.scalars(step, {'loss': 1.0})
  log.drop_after(10)
  log.scalars(20, {'loss': 0.5})
  log.close()
  assert _steps(tmp_path / 'metrics.jsonl') == [10, 20]


def test_check_workdir_in_a_bucket_probes_writing_and_skips_free_space(bucket):
  # disk_usage of a bucket URL would fail; no byte count can be too large for a bucket.
  workdir_lib.check_workdir('gs://b/run', bytes_needed=10**18)
  assert (bucket / 'b' / 'run').is_dir() and not list((bucket / 'b' / 'run').iterdir())


def test_check_workdir_in_an_unwritable_bucket_is_one_user_error(tmp_path):
  def refuse(original, path, mode, *args, **kwargs):
    if os.fspath(path).startswith('gs://'):
      raise PermissionError(13, 'Permission denied')
    return original(path, mode, *args, **kwargs)

  with epath_testing.mock_epath(
    open=refuse,
    makedirs=lambda original, *a, **k: None,
    mkdir=lambda original, *a, **k: None,
    exists=lambda original, path: True,
  ):
    with pytest.raises(UserError, match='gs://b/run is not writable'):
      workdir_lib.check_workdir('gs://b/run')


def test_tokenizer_copied_to_a_bucket_loads_from_it(tmp_path, bucket):
  documents = [string.ascii_lowercase * 30, 'a small corpus for a small tokenizer. ' * 80]
  local = tokenizer_lib.train_tokenizer(
    documents, tmp_path / 'tok.model', vocab_size=300, max_bytes=10**6
  )
  target = local.copy_to('gs://b/run')
  assert str(target) == 'gs://b/run/tokenizer.model'
  remote = tokenizer_lib.Tokenizer('gs://b/run/tokenizer.model')
  ids = local.encode(documents[1])
  assert remote.encode(documents[1]) == ids and remote.decode(ids) == documents[1]
  assert remote.special_ids == local.special_ids
  assert (bucket / 'b' / 'run' / 'tokenizer.model').read_bytes() == (
    tmp_path / 'tok.model'
  ).read_bytes()
  assert tokenizer_lib.read_record('gs://b/run/tokenizer.model')['eod_id'] == local.eod_id
