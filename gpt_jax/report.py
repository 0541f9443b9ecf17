"""What a run tells its user: console lines and a metrics.jsonl file in the workdir.

Only process 0 writes, so a multi-host run logs each step once.
"""

import json
import math
import sys
import time
from pathlib import Path

import jax


def _format(name: str, value) -> str:
  if isinstance(value, float):
    if name in ('learning_rate',):
      return f'{name} {value:.3e}'
    if name == 'mfu':
      return f'mfu {100 * value:.1f}%'
    if name.endswith('tokens_per_s'):
      return f'{name} {value:,.0f}'
    return f'{name} {value:.4f}' if math.isfinite(value) else f'{name} {value}'
  return f'{name} {value}'


class RunLog:
  """Appends one JSON record per logged step to `workdir/metrics.jsonl` and prints it."""

  def __init__(self, workdir: str | Path | None, stream=None):
    self._enabled = jax.process_index() == 0
    self._stream = stream
    self._file = None
    if workdir is not None and self._enabled:
      Path(workdir).mkdir(parents=True, exist_ok=True)
      self._file = open(Path(workdir) / 'metrics.jsonl', 'a', encoding='utf-8')
    self._start = time.time()

  def info(self, message: str) -> None:
    if self._enabled:
      print(message, file=self._stream or sys.stdout, flush=True)

  def scalars(self, step: int, values: dict, split: str = 'train') -> None:
    values = {k: float(v) if not isinstance(v, (int, str)) else v for k, v in values.items()}
    if not self._enabled:
      return
    self.info(f'{split} step {step} | ' + ' | '.join(_format(k, v) for k, v in values.items()))
    if self._file:
      record = {'split': split, 'step': step, 'time': round(time.time() - self._start, 3), **values}
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None
