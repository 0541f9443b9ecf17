"""A fine-tuned model's predictions on a split of its task, and the task's metrics on them.

Shared by fine-tuning (validation every epoch, test predictions at the end)
and by `gpt-jax eval` on a fine-tuning workdir (any split or task file).
Batches are encoded with the task's input transformation, split over the
processes and the mesh, and put back in the split's order.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from gpt_jax import sharding
from gpt_jax.tasks import metrics as task_metrics
from gpt_jax.tasks import transforms
from gpt_jax.tasks.batches import batches
from gpt_jax.tasks.task import Task


class TruncationCount:
  """Passes batches on, noting which examples were cut to fit max_len.

  Rows carry their example's `position` in the split, so an example met in
  every epoch, or as padding of a last batch, is counted once.
  """

  def __init__(self, encoded):
    self._encoded = iter(encoded)
    self.positions: set[int] = set()

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self._encoded))
    truncated = batch.pop('truncated').astype(bool) & batch['valid'].astype(bool)
    self.positions.update(int(p) for p in batch['position'][truncated])
    return batch

  def total(self, num_examples: int) -> int:
    """Examples of the split truncated by any process (each process sees its own rows)."""
    cut = np.zeros(num_examples, np.bool_)
    cut[sorted(self.positions)] = True
    if jax.process_count() > 1:
      cut = multihost_utils.process_allgather(cut).any(axis=0)
    return int(cut.sum())


class TaskPredictor:
  """`predict(params, examples)` -> (predictions, labels) for a `model.GPTForTask` on `mesh`."""

  def __init__(
    self, model, param_shardings, mesh, task: Task, tokenizer, max_len: int, bucket: int = 0
  ):
    self.mesh, self.task, self.tokenizer, self.max_len = mesh, task, tokenizer, max_len
    self.bucket = bucket  # batches padded to their longest sequence, rounded up to this
    predict_logits = transforms.predict_fn(model)
    with sharding.use_mesh(mesh):
      self._predict = jax.jit(
        lambda params, batch: (
          predict_logits(params, batch),
          batch['label'],
          batch['position'],
          batch['valid'],
        ),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
      )

  def predict(self, params, examples, batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(predictions, labels) for every example of one split, in the split's order, and how
    many of its examples were truncated."""
    outputs, labels, positions = [], [], []
    encoded = TruncationCount(
      batches(
        examples,
        self.task.kind,
        self.tokenizer,
        self.max_len,
        batch_size // jax.process_count(),
        bucket=self.bucket,
        pad_last=True,
        shard=(jax.process_index(), jax.process_count()),
      )
    )
    with sharding.use_mesh(self.mesh):
      for batch in encoded:
        batch = {k: sharding.global_batch(v, self.mesh) for k, v in batch.items()}
        logits, label, position, valid = self._predict(params, batch)
        keep = np.asarray(valid).astype(bool)
        outputs.append(np.asarray(logits)[keep])
        labels.append(np.asarray(label)[keep])
        positions.append(np.asarray(position)[keep])
    order = np.argsort(np.concatenate(positions))
    predictions = transforms.predictions(np.concatenate(outputs)[order], self.task.regression)
    return predictions, np.concatenate(labels)[order], encoded.total(len(examples))

  def score(self, params, examples, batch_size: int) -> tuple[dict, np.ndarray, int]:
    """The task's metrics on one split ({} when it is unlabelled), the predictions, and how
    many examples were truncated."""
    predictions, labels, truncated = self.predict(params, examples, batch_size)
    return split_metrics(self.task, predictions, labels), predictions, truncated


def split_metrics(task: Task, predictions, labels) -> dict:
  """The task's metrics on one split, or {} when it is unlabelled."""
  if (np.asarray(labels) == -1).all():
    return {}
  return task_metrics.task_metrics(task.metrics, predictions, labels)
