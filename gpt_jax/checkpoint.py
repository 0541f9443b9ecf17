"""Checkpoints on orbax's CheckpointManager: save, resume, reshard, and survive damage.

A run's workdir holds `checkpoints/<step>/`, each with four items:
  state    the TrainState (parameters, optimizer moments, step, dropout key)
  data     every process's data-iterator state, so a resumed run reads the next batch
  config   the run's config as JSON, so `--workdir` alone is enough to resume
  digests  a 32-bit digest of every array of the state (gpt_jax.array_digest), computed
           on the devices as it is saved and checked when it is restored
The tokenizer model is copied into the workdir beside them when the run starts.

Saves are asynchronous: `save` returns once the arrays are copied off the
device and the files are written while training goes on. Orbax writes each step
into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half checkpoint behind; a checkpoint damaged afterwards (a file
missing or cut short, or an array whose digest differs) is set aside with a warning
and the previous one is used. Checkpoints saved without digests restore unchecked.
"""

import base64
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from gpt_jax import array_digest, layer_layout, sharding
from gpt_jax import config as config_lib
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError, warn
from gpt_jax.train import Trainer, TrainState

STATE, DATA, CONFIG, DIGESTS = 'state', 'data', 'config', 'digests'


class DigestMismatch(Exception):
  """Arrays read from a checkpoint are not the ones saved (bits changed on disk)."""

  def __init__(self, names: list[str]):
    more = f' and {len(names) - 1} more' if len(names) > 1 else ''
    super().__init__(f'{names[0]}{more} differ from the digests saved with them')


def _check_digests(tree, stored: dict | None) -> None:
  """Raises DigestMismatch unless `tree`'s arrays have the `stored` digests (None: none saved)."""
  if stored is not None and (wrong := array_digest.mismatches(tree, stored)):
    raise DigestMismatch(wrong)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """The checkpoint section: how often a run saves and which checkpoints it keeps."""

  every_steps: int  # besides after every evaluation, at the end and on SIGTERM
  keep: int  # the newest kept ...
  keep_best: int  # ... plus the best by best_metric (0: none)
  best_metric: str
  best_mode: str  # 'min' or 'max'
  async_save: bool
  keep_log_spaced: bool  # also keep steps 1, 2, 5, 10, 20, 50, ... (zero-shot curves)
  lease_heartbeat_s: float  # a bucket workdir's lease is renewed this often ...
  lease_stale_after_s: float  # ... and taken over once not renewed for this long (gpt_jax.lease)

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> 'CheckpointConfig':
    return config_lib.section_view(cls, section, 'checkpoint')


class _NoMissingMetricsNotice(logging.Filter):
  """Drops orbax's warning for a save without metrics: with best tracking on (so that a
  resumed run knows its best checkpoint), every periodic save between evaluations is one."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


class _NoBackgroundWriteErrors(logging.Filter):
  """Drops orbax's ERROR records of a background save that failed to write: the Checkpointer
  raises that error itself (a full disk as one line) at the next save or wait."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (
      record.levelno >= logging.ERROR
      and 'orbax' in record.pathname
      and (
        'background save thread' in message or workdir_lib.write_error_reason(Exception(message))
      )
    )


logging.getLogger('absl').addFilter(_NoMissingMetricsNotice())
logging.getLogger('absl').addFilter(_NoBackgroundWriteErrors())


# The data item. Orbax's JSON item is written by the primary process only, but each
# process reads its own shard of the data, so each writes its own iterator state.


class _DataStateHandler(ocp.CheckpointHandler):
  """Stores this process's data-iterator state as `process_<i>-of-<n>.json`."""

  def save(self, directory, args: 'DataStateSave'):
    (epath.Path(directory) / _data_file_name()).write_text(json.dumps(args.state))

  def restore(self, directory, args: 'DataStateRestore | None' = None):
    path = epath.Path(directory) / _data_file_name()
    return json.loads(path.read_text()) if path.exists() else None

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(_DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any  # JSON-serialisable; captured when the save is requested


@ocp.args.register_with_handler(_DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _data_file_name() -> str:
  return f'process_{jax.process_index()}-of-{jax.process_count()}.json'


def _iterator_state(iterator) -> dict | None:
  """The iterator's `get_state()` (a JSON dict, or bytes as grain's DataLoader gives) as JSON."""
  if not hasattr(iterator, 'get_state'):
    return None
  state = iterator.get_state()
  if isinstance(state, bytes):
    return {'bytes': base64.b64encode(state).decode('ascii')}
  return {'json': state}


def _set_iterator_state(iterator, stored: dict) -> None:
  iterator.set_state(base64.b64decode(stored['bytes']) if 'bytes' in stored else stored['json'])


def _item_handlers() -> dict:
  return {
    STATE: ocp.StandardCheckpointHandler(),
    DATA: _DataStateHandler(),
    CONFIG: ocp.JsonCheckpointHandler(),
    DIGESTS: _DigestsHandler(),
  }


class _DigestsHandler(ocp.JsonCheckpointHandler):
  """Writes the digests `array_digest.start` dispatched as JSON, fetching them from the
  devices in the save's background commit: `save` does not wait for their computation."""

  async def _save_fn(self, x, directory):
    await super()._save_fn(array_digest.fetch(x), directory)


@ocp.args.register_with_handler(_DigestsHandler, for_save=True)
@dataclasses.dataclass
class DigestsSave(ocp.args.JsonSave):
  """item: what array_digest.start returned for the state being saved."""


@ocp.args.register_with_handler(_DigestsHandler, for_restore=True)
@dataclasses.dataclass
class DigestsRestore(ocp.args.JsonRestore):
  pass


# Up-front checks.


def checkpoint_bytes(abstract_state) -> int:
  """Bytes of one checkpoint: parameters and optimizer state (the rest is tiny)."""
  return sharding.tree_bytes((abstract_state.params, abstract_state.opt_state))


def space_needed(
  abstract_state, checkpoint_config: CheckpointConfig, workdir, log_records: int
) -> int:
  """Bytes a run will add to `workdir` at most: the checkpoints it keeps (checkpoint.keep
  newest, keep_best best, one being written) less those already there, and its logs
  (`log_records` metrics records, TensorBoard events, curves, tokenizer)."""
  held = checkpoint_config.keep + checkpoint_config.keep_best + 1
  directory = workdir_lib.path(workdir) / workdir_lib.CHECKPOINTS_DIR
  existing = (
    sum(f.stat().st_size for f in Path(directory).rglob('*') if f.is_file())
    if workdir_lib.is_local(directory) and directory.is_dir()
    else 0
  )
  logs = 2**20 + 2048 * log_records
  one = checkpoint_bytes(abstract_state) * 1.05 + 2**19  # and the files' own overhead
  return max(0, int(held * one) - existing) + logs


def check_compatible(stored_params, expected_params, where: str) -> None:
  """Raises a UserError listing every parameter whose stored shape differs from the model's.

  `stored_params` is the checkpoint's metadata tree, `expected_params` any tree of
  arrays or ShapeDtypeStructs; both are compared by path before anything is read.
  """
  stored, expected = _shapes_by_name(stored_params), _shapes_by_name(expected_params)
  problems = [
    f'{name} {stored[name]} in the checkpoint vs {shape} in the model'
    for name, shape in expected.items()
    if name in stored and stored[name] != shape
  ]
  problems += [f'{name} missing from the checkpoint' for name in expected if name not in stored]
  problems += [f'{name} not in the model' for name in stored if name not in expected]
  if problems:
    shown = problems[:20] + ([f'... and {len(problems) - 20} more'] if len(problems) > 20 else [])
    raise UserError(
      f'checkpoint {where} was saved from a different model ({len(problems)} '
      f'mismatched parameters: {"; ".join(shown)}); use the config it was trained '
      'with (omit --config to reuse the stored one) or another --workdir'
    )


def _shapes_by_name(tree) -> dict[str, tuple]:
  return {name: tuple(leaf.shape) for name, leaf in sharding.named_leaves(tree).items()}


def _into_layout_of(tree, target):
  """`tree`, read in a checkpoint's block layout, in the layout and shardings of `target`.

  A checkpoint saved with model.scan_layers on restores into a run with it off
  and back: the conversion runs on the devices, straight into the target layout.
  """
  # jaxlib ships no stub for PyTreeDef (its ==), so mypy cannot resolve the type.
  if jax.tree.structure(tree) == jax.tree.structure(target):  # type: ignore[operator]
    return tree  # saved in the same layout
  return jax.jit(
    lambda t: layer_layout.like(t, target), out_shardings=jax.tree.map(lambda t: t.sharding, target)
  )(tree)


class Checkpointer:
  """Saves and restores one run's checkpoints under `workdir/checkpoints`.

  Keeps the newest `checkpoint_config.keep` checkpoints plus the
  `checkpoint_config.keep_best` best by `best_metric` (`best_mode` 'min' or
  'max') among those saved with metrics. Use as a context manager: leaving it
  waits for the saves still being written.
  """

  def __init__(
    self, workdir: str | Path, checkpoint_config: CheckpointConfig, digest_arrays: bool = True
  ):
    self.workdir = _absolute(workdir)
    self._digest_arrays = digest_arrays  # off only to measure what digests cost
    self.directory = self.workdir / workdir_lib.CHECKPOINTS_DIR
    self._best_metric, self._keep_best = checkpoint_config.best_metric, checkpoint_config.keep_best
    self._best_mode = checkpoint_config.best_mode
    self._in_flight: int | None = None  # the step whose save may still be being written
    # A background save that fails leaves tensorstore writes completing on a closed loop.
    self._quiet = _quiet_leftovers_of_a_failed_read()
    self._quiet.__enter__()
    policies = [checkpoint_managers.LatestN(n=checkpoint_config.keep)]
    if checkpoint_config.keep_log_spaced:  # 1, 2, 5, 10, 20, 50, ...
      steps = [m * 10**e for e in range(13) for m in (1, 2, 5)]
      policies.append(checkpoint_managers.CustomSteps(steps=steps))
    best_fn = None
    if checkpoint_config.keep_best:
      if checkpoint_config.best_mode not in ('min', 'max'):
        raise UserError(f'checkpoint.best_mode={checkpoint_config.best_mode!r}: use min or max')
      best_fn = lambda metrics: metrics[self._best_metric]  # noqa: E731
      policies.append(
        checkpoint_managers.BestN(
          get_metric_fn=best_fn,
          reverse=checkpoint_config.best_mode == 'min',
          n=checkpoint_config.keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=checkpoint_config.async_save,
        cleanup_tmp_directories=True,  # what a killed save left behind
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # Only so that orbax writes each step's metrics: a resumed run must still know
        # which checkpoint is best. What is kept is the preservation policy's call.
        best_fn=best_fn,
        best_mode=checkpoint_config.best_mode,
      ),
    )

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()  # a failed save's one line replaces what its full disk broke meanwhile

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best(self) -> tuple[int | None, dict]:
    """(step, metrics) of the best kept checkpoint by best_metric; a tie goes to the later step."""
    self._manager.wait_until_finished()
    sign = -1 if self._best_mode == 'min' else 1
    scored = [
      (sign * metrics[self._best_metric], step, metrics)
      for step in self._manager.all_steps()
      if (metrics := self._manager.metrics(step)) and self._best_metric in metrics
    ]
    if not scored:
      return None, {}
    _, step, metrics = max(scored, key=lambda item: item[:2])
    return step, dict(metrics)

  def save(
    self,
    step: int,
    state,
    config: ml_collections.ConfigDict,
    data_iterator=None,
    metrics: dict | None = None,
  ) -> None:
    """Starts saving `state` as `step`; returns once the arrays are off the device.

    `metrics` (e.g. {'eval_loss': ...}) rank this checkpoint for keep_best.
    """
    if metrics is not None and self._keep_best and self._best_metric not in metrics:
      raise UserError(
        f'checkpoint.best_metric={self._best_metric!r} is not among the metrics '
        f'this run evaluates ({", ".join(metrics)})'
      )
    items = {
      STATE: ocp.args.StandardSave(state),
      CONFIG: ocp.args.JsonSave(config.to_dict()),
    }
    if self._digest_arrays:
      items[DIGESTS] = DigestsSave(array_digest.start(state))
    data_state = _iterator_state(data_iterator)
    if data_state is not None:
      items[DATA] = DataStateSave(data_state)
    with self._failing_write_is_one_line():  # a failure here is the previous save's
      self._manager.wait_until_finished()
    self._in_flight = step
    with self._failing_write_is_one_line():  # and here this one's (its metadata, on a full disk)
      self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  @contextlib.contextmanager
  def _failing_write_is_one_line(self):
    """Turns a save that failed for want of space (or a failing disk) into one UserError,
    without the errors of its leftover writes."""
    try:
      yield
    except Exception as error:
      reason = workdir_lib.write_error_reason(error)
      if reason is None:
        raise
      partial = self.directory / f'{self._in_flight}.orbax-checkpoint-tmp'
      if jax.process_index() == 0 and partial.exists():
        partial.rmtree()  # gives its space back to the logs still to be flushed
      raise UserError(
        f'could not write checkpoint {self._in_flight} in {self.directory} ({reason}); '
        'the checkpoints before it are intact: free some space and rerun the same command to resume'
      ) from None

  def restore_latest(self, trainer: Trainer, data_iterator=None) -> TrainState | None:
    """The newest readable checkpoint's TrainState, laid out on `trainer`'s mesh, or None.

    Restoring reshards: the arrays are read straight into `trainer.state_shardings`,
    whatever mesh they were saved from, and converted to the trainer's block layout
    (model.scan_layers) if saved in the other. The data iterator is moved to where the
    checkpoint left it. Unreadable checkpoints are set aside with a warning; one
    saved from a different model shape is an error.
    """
    target = sharding.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
    for step in sorted(self._manager.all_steps(), reverse=True):
      step_dir = self.directory / str(step)
      try:
        stored = self._manager.item_metadata(step)[STATE].tree
      except Exception as error:  # noqa: BLE001 -- any unreadable metadata is damage
        self._set_aside(step, error)
        continue
      # Read in the layout it was saved in (scanned or unrolled blocks), convert after.
      stored_target = layer_layout.like(target, stored['params'])
      check_compatible(stored['params'], stored_target.params, str(step_dir))
      has_data = (step_dir / DATA).is_dir()
      items = {STATE: ocp.args.StandardRestore(stored_target), **_digests_item(step_dir)}
      if has_data:
        items[DATA] = DataStateRestore()
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        _check_digests(restored[STATE], restored.get(DIGESTS))
      except Exception as error:  # noqa: BLE001 -- a truncated or missing file is damage
        self._set_aside(step, error)
        continue
      self._restore_data_position(data_iterator, restored[DATA] if has_data else None, step)
      return _into_layout_of(restored[STATE], target)
    return None

  def _restore_data_position(self, iterator, stored: dict | None, step: int) -> None:
    if iterator is None:
      return
    if stored is not None and hasattr(iterator, 'set_state'):
      _set_iterator_state(iterator, stored)
    elif stored is not None:
      warn(
        f'the data iterator has no set_state(), so it starts from its beginning instead '
        f'of where checkpoint {step} left it'
      )
    elif hasattr(iterator, 'set_state'):
      warn(
        f'checkpoint {step} holds no data position for {_data_file_name()} (saved by a '
        'different number of processes, or from an iterator without get_state()); the '
        'data iterator starts from its beginning'
      )

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step out of the way so training can save that step again."""
    step_dir = self.directory / str(step)
    target = self.workdir / workdir_lib.DAMAGED_CHECKPOINTS_DIR / str(step)
    warn(
      f'checkpoint {step_dir} is unreadable ({type(error).__name__}: '
      f'{str(error).splitlines()[0] if str(error) else ""}); moved it to {target} and '
      'trying the previous one'
    )
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      if target.exists():
        target.rmtree()
      step_dir.rename(target)
    ocp.multihost.sync_global_processes(f'gpt_jax_set_aside_{step}')
    self._manager.reload()

  def discard_from(self, step: int) -> None:
    """Deletes the checkpoints of `step` and later (a loss-spike rollback's: they hold the
    updates it undoes), once every started save is on disk."""
    self.wait()
    for saved in self._manager.all_steps():
      if saved >= step:
        self._manager.delete(saved)

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    with self._failing_write_is_one_line():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._failing_write_is_one_line():
      self._manager.wait_until_finished()
      self._manager.close()  # writes the metadata of the last save
    self._quiet.__exit__(None, None, None)


def _digests_item(step_dir: epath.Path) -> dict:
  """The restore argument of a step's digests, if it was saved with them."""
  return {DIGESTS: DigestsRestore()} if (step_dir / DIGESTS).is_dir() else {}


# Reading a workdir without training: the config to resume with, parameters to fine-tune
# or sample from.


def _absolute(workdir: str | Path) -> epath.Path:
  """orbax wants an absolute directory; a bucket URL already is one."""
  path = workdir_lib.path(workdir)
  return path.resolve() if workdir_lib.is_local(path) else path


def _read_only_manager(
  workdir: str | Path, state_handler=None
) -> tuple[ocp.CheckpointManager, epath.Path]:
  directory = _absolute(workdir) / workdir_lib.CHECKPOINTS_DIR
  if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
    raise UserError(
      f'{workdir} holds no checkpoint (nothing in {directory}); give a config to '
      'start a new run there, or the workdir of a run that saved one'
    )
  handlers = _item_handlers()
  if state_handler is not None:
    handlers[STATE] = state_handler
  # Never saved to; `read_only=True` would say so too, but warns on every open.
  return ocp.CheckpointManager(
    directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(create=False)
  ), directory


@contextlib.contextmanager
def _quiet_leftovers_of_a_failed_read():
  """Drops the errors of a failed read's leftover tensorstore reads.

  When a damaged checkpoint fails to read, orbax closes its event loop while
  tensorstore still completes the other reads of that step. Each completion
  then reports RuntimeError('Event loop is closed') through sys.unraisablehook,
  or, once its task or future is collected, asyncio logs '<Task|Future>
  exception was never retrieved' with tensorstore's own error: dozens of
  tracebacks after the one warning that matters. They can come after the read
  has failed, so after a failure the filters stay installed. They drop nothing
  else: the asyncio filter drops only never-retrieved records whose exception
  is tensorstore's (its message carries the failed read's `tensorstore_spec`).
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    code = getattr(unraisable.object, 'cr_code', None)  # an orbax write abandoned at exit
    if not (closed_loop or (code is not None and '/orbax/' in code.co_filename)):
      previous(unraisable)

  def keep_record(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (
      'exception was never retrieved' in record.getMessage()
      and ('tensorstore_spec' in str(error) or workdir_lib.write_error_reason(error))
    )

  asyncio_logger = logging.getLogger('asyncio')
  sys.unraisablehook = hook
  asyncio_logger.addFilter(keep_record)
  yield  # an exception propagates from here, leaving the filters in place
  sys.unraisablehook = previous
  asyncio_logger.removeFilter(keep_record)


def _first_readable(manager: ocp.CheckpointManager, directory: Path, read, step: int | None):
  """`read(step)` for `step`, or for the newest step it succeeds on (warning about the rest)."""
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  for candidate in steps:
    try:
      with _quiet_leftovers_of_a_failed_read():
        return read(candidate)
    except UserError:
      raise
    except Exception as error:  # noqa: BLE001 -- damage: try the previous checkpoint
      if step is not None:
        raise UserError(
          f'checkpoint {directory / str(step)} is unreadable ({type(error).__name__}: {error})'
        ) from None
      warn(
        f'checkpoint {directory / str(candidate)} is unreadable ({type(error).__name__}); '
        'trying the previous one'
      )
  raise UserError(f'no readable checkpoint in {directory}')


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config stored with the newest readable checkpoint in `workdir`."""
  manager, directory = _read_only_manager(workdir)
  with manager:
    stored = _first_readable(
      manager,
      directory,
      lambda step: manager.restore(
        step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
      )[CONFIG],
      None,
    )
  return ml_collections.ConfigDict(_upgrade_config(stored))


_ADDED_FIELDS = {
  'checkpoint': {'lease_heartbeat_s': 30.0, 'lease_stale_after_s': 90.0},
  'train': {
    'hang_timeout_s': 600.0,
    'preemption_grace_s': 30.0,
    'spike': False,
    'spike_threshold': 6.0,
    'spike_window': 100,
    'spike_max_rollbacks': 3,
  },
}


def _upgrade_config(stored: dict) -> dict:
  """A stored config (JSON) with today's fields, so old workdirs resume and take overrides.

  model.remat was a bool before it named a policy (True -> 'full', False -> 'none');
  fields added since (model.scan_layers, model.arch, model.lstm_units, compile_cache_dir, the
  watchdog's, the lease's and the loss-spike rollback's settings) get their defaults.
  """
  from gpt_jax import compile_cache

  model = stored.get('model')
  if isinstance(model, dict):
    if isinstance(model.get('remat'), bool):
      model['remat'] = 'full' if model['remat'] else 'none'
    model.setdefault('scan_layers', False)
    model.setdefault('arch', 'transformer')
    model.setdefault('lstm_units', 2048)
  stored.setdefault('compile_cache_dir', compile_cache.DEFAULT_DIR)
  for section, defaults in _ADDED_FIELDS.items():
    if isinstance(stored.get(section), dict):
      for field, value in defaults.items():
        stored[section].setdefault(field, value)
  return stored


def load_params(workdir: str | Path, target=None, step: int | None = None) -> Any:
  """The parameters of a pretraining workdir's newest readable checkpoint (or of `step`).

  `target` is a tree of jax.ShapeDtypeStruct with shardings (e.g. from a
  Trainer's abstract_state.params and param_shardings): the arrays are checked
  against it and read straight into that layout, blocks scanned or unrolled as
  the target has them. Without it they come back as host numpy arrays in the
  block layout they were saved in, for a caller that reshapes them first (e.g.
  adding fine-tuning tokens). The optimizer state is never read.
  """
  manager, directory = _read_only_manager(workdir, state_handler=ocp.PyTreeCheckpointHandler())

  def read(candidate):
    stored = manager.item_metadata(candidate)[STATE].tree['params']
    if target is not None:
      item = layer_layout.like(target, stored)
      check_compatible(stored, item, str(directory / str(candidate)))
      restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    else:
      item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored)
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    restored = manager.restore(
      candidate,
      args=ocp.args.Composite(
        **{
          STATE: ocp.args.PyTreeRestore(
            item={'params': item}, restore_args={'params': restore_args}, partial_restore=True
          )
        },
        **_digests_item(directory / str(candidate)),
      ),
    )
    _check_digests(restored[STATE], restored.get(DIGESTS))
    params = restored[STATE]['params']
    return params if target is None else _into_layout_of(params, target)

  with manager:
    return _first_readable(manager, directory, read, step)


class PreemptionWatch:
  """Turns SIGTERM (what a TPU VM gets before preemption) into a stop at a step boundary.

  One process: a Python handler notes the signal. Several: JAX's preemption
  service (started by jax.distributed.initialize) catches it on whichever host
  gets it and names a step every host reaches, so all of them save the same step.
  `should_stop(count)` must be called by every process after every call of the train
  step, with a count that grows by one per call.
  """

  def __init__(self):
    self._requested = False
    self._previous = None  # the handler to put back, once ours is installed

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._note) or signal.SIG_DFL
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _note(self, signum, frame) -> None:
    del signum, frame
    self._requested = True

  def should_stop(self, count: int) -> bool:
    if jax.process_count() > 1:
      return ocp.multihost.reached_preemption(count)
    return self._requested
