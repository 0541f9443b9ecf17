"""Zero-shot probes during pretraining (the paper's figure 2, right).

`--config.train.zero_shot=finetune/sst2,finetune/cola` names task configs that have a
zero-shot probe (gpt_jax.zero_shot); at the steps `train.zero_shot_every` names
('log': 1, 2, 5, 10, 20, 50, ... and the last step; or a comma-separated list) the
language model is probed on each task's validation split(s) and the scores are logged
under the split 'zero_shot' next to the loss (metrics.jsonl, TensorBoard, W&B):
`<name>_<metric>` and `<name>_<metric>_chance` (name: the config's file name, sst2) (the score of a random guess) for each
validation split's first metric. The same checkpoint scored by `gpt-jax eval
--zero_shot --step N` gives the same numbers.
"""

import dataclasses
import pathlib
from typing import TYPE_CHECKING

from gpt_jax.errors import UserError
from gpt_jax.scoring import Scorer

if TYPE_CHECKING:  # imported where used: zero_shot loads the task sources
  from gpt_jax import zero_shot
  from gpt_jax.tasks.task import Task


def log_spaced_steps(last: int) -> list[int]:
  """1, 2, 5, 10, 20, 50, ... up to `last`, and `last`."""
  steps: set[int] = set()
  scale = 1
  while scale <= last:
    steps.update(m * scale for m in (1, 2, 5) if m * scale <= last)
    scale *= 10
  return sorted(steps | {last})


def probe_steps(every, total_steps: int) -> list[int]:
  """The steps train.zero_shot_every names: 'log', or steps as a list or comma-separated text."""
  if str(every).strip() == 'log':
    return log_spaced_steps(total_steps)
  items = every if isinstance(every, (list, tuple)) else str(every).split(',')
  try:
    steps = sorted({int(item) for item in items if str(item).strip()})
  except ValueError:
    raise UserError(
      f"train.zero_shot_every={every!r}: use 'log' or steps like 100,1000,10000"
    ) from None
  if not steps or not 0 < steps[0] <= steps[-1] <= total_steps:
    raise UserError(f'train.zero_shot_every={every!r}: steps must lie in 1..{total_steps}')
  return steps


@dataclasses.dataclass
class _Probed:
  task: 'Task'
  probe: 'zero_shot.Probe'


class PretrainingProbes:
  """`probes(params, step)` -> {name: score}: every configured task's probe on `params`."""

  def __init__(self, train_config, model_config, tokenizer, mesh, seq_len: int, total_steps: int):
    from gpt_jax import config as config_lib
    from gpt_jax import zero_shot
    from gpt_jax.tasks.load import load_task

    names = [name.strip() for name in str(train_config.zero_shot).split(',') if name.strip()]
    self.tokenizer, self.probed = tokenizer, {}
    for name in names:
      task_config = config_lib.load_config(name).task
      task = load_task(task_config, needs_train=False)
      try:  # named by the config: finetune/sst2 -> sst2, my_probe.py -> my_probe
        self.probed[pathlib.Path(name).stem] = _Probed(task, zero_shot.probe_for(task, task_config))
      except UserError as error:
        raise UserError(f'train.zero_shot: {name}: {error}') from None
    self.steps = set(probe_steps(train_config.get('zero_shot_every', 'log'), total_steps))
    batch_size = train_config.get('zero_shot_batch_size', 8)
    self._scorer = Scorer(None, model_config, mesh, batch_size, seq_len)

  def __call__(self, params, step: int) -> dict:
    from gpt_jax import zero_shot

    self._scorer.set_params(params)
    scores = {}
    for name, probed in self.probed.items():
      results = zero_shot.evaluate(
        self._scorer, self.tokenizer, probed.task, probed.probe, dict(probed.task.validation)
      )
      for split, result in results.items():
        key = name if len(results) == 1 else f'{name}_{split}'
        scores[f'{key}_{result["metric"]}'] = result[result['metric']]
        scores[f'{key}_{result["metric"]}_chance'] = result['chance']
    return scores
