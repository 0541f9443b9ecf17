"""Checkpoints: resharding restores, damaged and mismatched checkpoints, workdir checks,
keep policies, and non-finite steps. (Kill-and-resume runs are in test_resume.py.)"""

import jax
import numpy as np
import pytest
from helpers import make_trainer, tiny_config

from gpt_jax import checkpoint, pretrain, sharding
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError


class CountingIterator:
  """Yields the same batch forever; its state (a dict, or bytes like grain's DataLoader) counts."""

  def __init__(self, batch, as_bytes=False):
    self.batch, self.as_bytes, self.count = batch, as_bytes, 0

  def __next__(self):
    self.count += 1
    return self.batch

  def get_state(self):
    return str(self.count).encode() if self.as_bytes else {'count': self.count}

  def set_state(self, state):
    self.count = int(state) if self.as_bytes else state['count']


def _mesh(shape, devices=None):
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices)


def _batch(seed=0, vocab=64):
  return np.random.default_rng(seed).integers(0, vocab, (8, 17)).astype(np.int32)


def _host(state):
  """A numpy copy of a TrainState (keys as their raw data): the independent reference."""
  return jax.tree.map(np.asarray, jax.device_get(state.replace(rng=jax.random.key_data(state.rng))))


def _assert_equal_trees(actual, expected):
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def one_device():
  """A tiny config and its Trainer on one device, compiled once for the tests that share it."""
  config = tiny_config()
  mesh = _mesh((1, 1, 1), jax.devices()[:1])
  return config, mesh, make_trainer(config, mesh)[1]


def _trained_state(trainer, mesh, steps=1):
  state = trainer.init(jax.random.key(0))
  for i in range(steps):
    state, _ = trainer.train_step(state, sharding.global_batch(_batch(i), mesh))
  return state


def test_restore_onto_other_meshes_reshards_with_identical_values(tmp_path):
  config = tiny_config()
  mesh = _mesh((2, 2, 2))
  _, trainer = make_trainer(config, mesh)
  state = _trained_state(trainer, mesh)
  expected = _host(state)
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    saver.save(1, state, config, CountingIterator(None))

  for shape, devices in [((8, 1, 1), None), ((1, 1, 1), jax.devices()[:1])]:
    target_mesh = _mesh(shape, devices)
    _, target = make_trainer(config, target_mesh)
    data = CountingIterator(None)
    data.count = 99
    with checkpoint.Checkpointer(tmp_path, config.checkpoint) as loader:
      restored = loader.restore_latest(target, data)
    assert data.count == 0  # the iterator is back where the checkpoint left it
    _assert_equal_trees(_host(restored), expected)
    for array, wanted in zip(jax.tree.leaves(restored), jax.tree.leaves(target.state_shardings)):
      assert array.sharding == wanted and array.sharding.mesh.devices.shape == shape

    # Parameters only (fine-tuning / sampling): into a given layout, or as host arrays.
    target_params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      target.abstract_state.params,
      target.param_shardings,
    )
    _assert_equal_trees(checkpoint.load_params(tmp_path, target_params), expected.params)
    params = checkpoint.load_params(tmp_path)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    _assert_equal_trees(params, expected.params)
  assert checkpoint.load_config(tmp_path).to_dict() == config.to_dict()


def test_corrupted_latest_checkpoint_is_set_aside_and_previous_used(tmp_path, capsys, one_device):
  config, mesh, trainer = one_device
  state = trainer.init(jax.random.key(0))
  batch = sharding.global_batch(_batch(), mesh)
  data = CountingIterator(None, as_bytes=True)
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    state, _ = trainer.train_step(state, batch)
    data.count = 1
    saver.save(1, state, config, data)
    expected = _host(state)
    state, _ = trainer.train_step(state, batch)
    data.count = 2
    saver.save(2, state, config, data)
  for path in (tmp_path / 'checkpoints' / '2' / 'state').rglob('*'):
    if path.is_file():  # a disk that lost the second half of every file
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  half_written = tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp' / 'state'
  half_written.mkdir(parents=True)  # what a save killed midway leaves
  (half_written / 'manifest.ocdbt').write_bytes(b'\x00' * 10)

  data.count = 99
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as loader:
    restored = loader.restore_latest(trainer, data)
    assert loader.latest_step() == 1
    saver_again = loader  # step 2 can be saved again now that the damaged one is aside
    saver_again.save(2, restored, config, data)
  err = capsys.readouterr().err
  assert f'checkpoint {tmp_path.resolve() / "checkpoints" / "2"} is unreadable' in err
  assert (tmp_path / 'damaged_checkpoints' / '2').is_dir()
  assert not half_written.parent.exists()
  _assert_equal_trees(_host(restored), expected)
  assert data.count == 1


def test_checkpoint_of_another_model_shape_lists_the_mismatched_parameters(tmp_path, one_device):
  config, mesh, trainer = one_device
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    saver.save(3, trainer.init(jax.random.key(0)), config)

  _, wider = make_trainer(tiny_config(d_ff=128), mesh)
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as loader:
    with pytest.raises(UserError) as error:
      loader.restore_latest(wider)
  message = str(error.value)
  assert 'was saved from a different model (6 mismatched parameters' in message
  for layer in ('h_0', 'h_1'):
    for name, stored, model in [
      ('c_fc/kernel', (32, 64), (32, 128)),
      ('c_fc/bias', (64,), (128,)),
      ('c_proj/kernel', (64, 32), (128, 32)),
    ]:
      assert f'{layer}/mlp/{name} {stored} in the checkpoint vs {model} in the model' in message
  assert (tmp_path / 'checkpoints' / '3').is_dir()  # a mismatch is not damage: nothing moved


def test_keeps_the_newest_checkpoints_plus_the_best(tmp_path, one_device):
  config, _, trainer = one_device
  config = config.copy_and_resolve_references()
  config.checkpoint.update(keep=2, keep_best=1)
  state = trainer.init(jax.random.key(0))
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    for step, loss in zip(range(1, 7), [3.0, 1.0, 4.0, None, 5.0, 6.0]):
      saver.save(step, state, config, metrics=None if loss is None else {'eval_loss': loss})
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == [
    2,
    5,
    6,
  ]


def _pretrain_five_steps(workdir):
  config = tiny_config()
  config.train.num_steps = 5
  batch = _batch()
  return pretrain.run_pretraining(config, workdir, iter([batch] * 5), lambda: [batch])


def test_unwritable_workdir_fails_before_training(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(UserError, match=f'workdir {blocker / "run"} is not writable'):
    _pretrain_five_steps(blocker / 'run')


def test_full_workdir_fails_before_training(tmp_path, monkeypatch):
  real_disk_usage = workdir_lib.shutil.disk_usage
  monkeypatch.setattr(
    workdir_lib.shutil, 'disk_usage', lambda path: real_disk_usage(path)._replace(free=10_000)
  )
  with pytest.raises(
    UserError,
    match=r'has 0\.0 MiB free but this run needs 4\.7 MiB \(checkpoint\.keep \+ keep_best \+ '
    r'one being written, and its logs\); free some space',
  ):
    _pretrain_five_steps(tmp_path)
  assert list(tmp_path.iterdir()) == []  # nothing trained, logged or saved


def test_non_finite_step_leaves_params_and_optimizer_unchanged(one_device):
  _, mesh, trainer = one_device
  state = _trained_state(trainer, mesh)
  before = _host(state)
  poisoned = _batch()
  poisoned[0, 3] = 1000  # out of the vocabulary: the embedding lookup gives NaN
  state, metrics = trainer.train_step(state, sharding.global_batch(poisoned, mesh))
  assert bool(metrics['update_skipped']) and not np.isfinite(float(metrics['loss']))
  after = _host(state)
  assert int(after.step) == int(before.step) + 1
  _assert_equal_trees(after.params, before.params)
  _assert_equal_trees(after.opt_state, before.opt_state)

  state, metrics = trainer.train_step(state, sharding.global_batch(_batch(1), mesh))
  assert not bool(metrics['update_skipped'])
  assert not np.array_equal(
    _host(state).params['h_0']['mlp']['c_fc']['kernel'],
    before.params['h_0']['mlp']['c_fc']['kernel'],
  )


def test_diverged_run_stops_after_too_many_non_finite_steps_keeping_good_checkpoint(tmp_path):
  config = tiny_config()
  config.train.update(
    num_steps=20, max_nonfinite_in_a_row=3, log_every=100, eval_every=100, eval_batches=1
  )
  config.checkpoint.every_steps = 2
  good, poisoned = _batch(), np.full((8, 17), 1000, np.int32)
  batches = iter([good] * 4 + [poisoned] * 16)
  with pytest.raises(
    UserError,
    match=r'training diverged: 3 steps in a row, up to step 7, had '
    r'a non-finite loss .* the last checkpoint \(step 6\) is good',
  ):
    pretrain.run_pretraining(config, tmp_path, batches, lambda: [good], log=None)
  last, after_good = checkpoint.load_params(tmp_path), checkpoint.load_params(tmp_path, step=4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(last))
  _assert_equal_trees(last, after_good)
