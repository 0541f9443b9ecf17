"""Damage is named, never trained on: token-store shards (out-of-vocabulary ids, in-vocabulary
garbage, truncation), a checkpoint with one flipped byte, a disk that fills during a save."""

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import prepared_local_corpus

from gpt_jax import checkpoint, cli

RUN_FLAGS = [
  '--config.model.n_layer=1',
  '--config.model.n_embd=32',
  '--config.model.n_head=4',
  '--config.model.d_ff=64',
  '--config.model.n_ctx=32',
  '--config.train.seq_len=16',
  '--config.train.batch_size=8',
  '--config.train.num_steps=6',
  '--config.checkpoint.every_steps=2',
  '--config.train.eval_every=100',
  '--config.train.eval_batches=1',
  '--config.data.prepare_workers=1',
]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """Config flags of a prepared local corpus, and its train shard."""
  root = tmp_path_factory.mktemp('integrity')
  flags = prepared_local_corpus(root) + RUN_FLAGS
  (store,) = (root / 'data' / 'gpt_jax_token_stores').iterdir()
  return flags, store / 'train-00000.bin', root


def _pretrain(flags, workdir) -> int:
  return cli.main(['pretrain', '--config', 'tiny', '--workdir', str(workdir), *flags])


def _error_lines(capsys) -> list[str]:
  return [line for line in capsys.readouterr().err.splitlines() if line.startswith('gpt-jax:')]


def _out_of_vocabulary(data: bytearray) -> None:
  data[2000:6096] = b'\xff' * 4096


def _in_vocabulary_garbage(data: bytearray) -> None:
  ids = np.frombuffer(bytes(data[2000:6096]), '<u2')
  data[2000:6096] = np.random.default_rng(0).permutation(ids).tobytes()  # the same ids, moved


def _truncated(data: bytearray) -> None:
  del data[-100:]


@pytest.mark.parametrize(
  'damage, what',
  [
    (
      _out_of_vocabulary,
      'block 0 (bytes 0-1,048,575) does not match its crc32c checksum (changed on disk after it '
      'was written; it holds token id 65,535, outside the vocabulary (320 ids))',
    ),
    (
      _in_vocabulary_garbage,
      'block 0 (bytes 0-1,048,575) does not match its crc32c checksum (changed on disk after it '
      'was written)',
    ),
    (_truncated, 'holds {size:,} bytes but its record says {record:,} (truncated or overwritten)'),
  ],
)
def test_a_damaged_shard_is_named_in_one_line_and_prepare_rebuilds_it(
  corpus, damage, what, tmp_path, capsys
):
  flags, shard, _ = corpus
  pristine = shard.read_bytes()
  data = bytearray(pristine)
  damage(data)
  shard.write_bytes(bytes(data))
  what = what.format(size=len(data), record=len(pristine))
  expected = (
    f'gpt-jax: error: token store {shard.parent}: shard {shard.name} {what}; run `gpt-jax '
    'prepare` with the same config flags to rebuild the damaged shards'
  )
  capsys.readouterr()
  assert _pretrain(flags, tmp_path / 'run') == 1
  assert _error_lines(capsys) == [expected]
  assert not list((tmp_path / 'run' / 'checkpoints').glob('*'))  # nothing trained on it
  assert cli.main(['prepare', '--config', 'tiny', '--verify', *flags]) == 1
  assert f'1 of 2 shards damaged ({shard.name} {what})' in capsys.readouterr().err
  assert cli.main(['prepare', '--config', 'tiny', *flags]) == 0
  assert f'rebuilding shard {shard.name} ({what})' in capsys.readouterr().out
  assert shard.read_bytes() == pristine
  assert cli.main(['prepare', '--config', 'tiny', '--verify', *flags]) == 0
  assert '2 shards (0.0 MiB) intact' in capsys.readouterr().out


@pytest.fixture(scope='module')
def reference(corpus):
  """An uninterrupted run's workdir: checkpoints 2, 4 and 6."""
  flags, _, root = corpus
  assert _pretrain(flags, root / 'reference') == 0
  return root / 'reference'


def _params(workdir, step: int) -> list[np.ndarray]:
  import jax

  return jax.tree.leaves(checkpoint.load_params(workdir, step=step))


def _assert_same_params(workdir, reference, step: int) -> None:
  for actual, expected in zip(_params(workdir, step), _params(reference, step), strict=True):
    np.testing.assert_array_equal(actual, expected)


def _flip_a_byte_of(state_dir, key: bytes) -> None:
  """Flips the middle byte of the stored chunk `key` in the OCDBT data file that holds it.

  The chunk is found by its bytes: a data file also holds other values and B-tree nodes, so a
  byte picked by position alone may belong to nothing that a restore reads."""
  import tensorstore as ts

  store = ts.KvStore.open({'driver': 'ocdbt', 'base': f'file://{state_dir}/'}).result()
  chunk = store.read(key).result().value
  assert len(chunk) > 100, key
  (data_file,) = [
    p for p in state_dir.rglob('*') if p.parent.name == 'd' and chunk in p.read_bytes()
  ]
  data = bytearray(data_file.read_bytes())
  data[data.index(chunk) + len(chunk) // 2] ^= 0x10
  data_file.write_bytes(bytes(data))  # same size: only the digest or the decoder can tell


def test_a_checkpoint_with_a_flipped_byte_is_set_aside_and_the_previous_one_resumed(
  corpus, reference, tmp_path
):
  flags, _, _ = corpus
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  _flip_a_byte_of(workdir / 'checkpoints' / '6' / 'state', b'params.tokens_embed.embedding/0.0')
  # In a process of its own, as a user runs it: what counts is the one line on its stderr.
  command = ['pretrain', '--config', 'tiny', '--workdir', str(workdir), *flags]
  result = subprocess.run(
    [sys.executable, '-m', 'gpt_jax.cli', *command], capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (warning,) = [line for line in result.stderr.splitlines() if line.startswith('gpt-jax:')]
  step_dir = workdir.resolve() / 'checkpoints' / '6'
  assert warning.startswith(f'gpt-jax: warning: checkpoint {step_dir} is unreadable (')
  assert warning.endswith(
    f'moved it to {workdir.resolve() / "damaged_checkpoints" / "6"} and trying the previous one'
  )
  _assert_same_params(workdir, reference, 6)  # retrained from step 4, not from the damage


@contextlib.contextmanager
def _small_tmpfs(directory):
  """A 6 MiB tmpfs at `directory` (the test runs as root); yields (fill, free): fill writes
  a ballast file over all its space but 64 KiB, free deletes it and grows the disk."""
  directory.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', str(directory)], check=True)

  def fill() -> None:
    stats = os.statvfs(directory)
    (directory / 'ballast').write_bytes(b'\0' * (stats.f_bavail * stats.f_frsize - 2**16))

  def free() -> None:
    (directory / 'ballast').unlink()
    subprocess.run(['mount', '-o', 'remount,size=12m', str(directory)], check=True)

  try:
    yield fill, free
  finally:
    subprocess.run(['umount', str(directory)], check=True)


@contextlib.contextmanager
def _full_disk_double(directory):
  """A filesystem double for a run without root: once filled, every file opened for writing
  through epath under `directory/run/checkpoints` fails with ENOSPC, as on a full disk.

  epath is what orbax writes each checkpoint's JSON items and metadata with (and our data
  item), from its background save thread, so a save fails where it would on a full disk;
  the array bytes tensorstore writes in C++ are not intercepted.
  """
  from etils.epath import testing as epath_testing

  directory.mkdir()
  full = threading.Event()
  checkpoints = str(directory / 'run' / 'checkpoints')

  def open_on_a_full_disk(original, path, mode='r', *args, **kwargs):
    writing = any(flag in mode for flag in 'wax+')
    if full.is_set() and writing and os.fspath(path).startswith(checkpoints):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return original(path, mode, *args, **kwargs)

  with epath_testing.mock_epath(open=open_on_a_full_disk):
    yield full.set, full.clear


@pytest.mark.parametrize(
  'small_disk',
  [
    pytest.param(
      _small_tmpfs,
      id='tmpfs',
      marks=pytest.mark.skipif(os.geteuid() != 0, reason='mounting a tmpfs needs root'),
    ),
    pytest.param(_full_disk_double, id='filesystem-double'),
  ],
)
def test_a_disk_full_during_a_save_is_one_line_and_a_rerun_with_space_finishes_equal(
  corpus, reference, tmp_path, capsys, monkeypatch, small_disk
):
  flags, _, _ = corpus
  real_save = checkpoint.Checkpointer.save
  disk = tmp_path / 'disk'

  with small_disk(disk) as (fill, free):

    def save_on_a_filling_disk(self, step, *args, **kwargs):
      if step == 4:  # something else fills the disk once checkpoint 2 is written
        self.wait()
        fill()
      return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, 'save', save_on_a_filling_disk)
    capsys.readouterr()
    assert _pretrain(flags, disk / 'run') == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith('gpt-jax:')] == [
      f'gpt-jax: error: could not write checkpoint 4 in {disk / "run" / "checkpoints"} (No space '
      'left on device); the checkpoints before it are intact: free some space and rerun the '
      'same command to resume'
    ], err[-3000:]
    assert 'Traceback' not in err and 'ERROR' not in err, err[-3000:]
    _assert_same_params(disk / 'run', reference, 2)
    monkeypatch.setattr(checkpoint.Checkpointer, 'save', real_save)
    free()
    assert _pretrain(flags, disk / 'run') == 0
    _assert_same_params(disk / 'run', reference, 6)


def test_range_reads_verify_whole_blocks_and_unverified_windows_check_the_vocabulary(tmp_path):
  import fsspec

  from gpt_jax.data import checksums, tokens

  ids = (np.arange(3000) % 300).astype('<u2')
  hasher = checksums.BlockHasher(block_bytes=1024)
  hasher.update(ids.tobytes())
  data = bytearray(ids.tobytes())
  data[3000] ^= 1  # token 1500, in block 2
  shard = tmp_path / 'train-00000.bin'
  shard.write_bytes(bytes(data))
  remote = tokens.RemoteTokens(
    fsspec.filesystem('file'),
    [str(shard)],
    [3000],
    np.uint16,
    checksums=[checksums.decode(hasher.hexdigest())],
    vocab_size=300,
    block_bytes=1024,
  )
  np.testing.assert_array_equal(remote.read([0, 600], 100), np.stack([ids[:100], ids[600:700]]))
  with pytest.raises(checksums.DamagedShard, match=r'block 2 \(bytes 2,048-3,071\) does not'):
    remote.read([1400], 100)  # bytes 2,800-3,000 of the block: the whole block is checked
  unverified = tokens.LocalTokens([str(shard)], [3000], np.uint16, checksums=None, vocab_size=100)
  with pytest.raises(checksums.DamagedShard, match=r'block 0 .* holds token id 100, outside'):
    unverified.read([0], 200)
