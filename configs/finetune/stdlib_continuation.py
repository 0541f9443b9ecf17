"""Offline default task, entailment: does a sentence continue a docstring passage?

'continues' (the next sentence of its docstring) or 'unrelated' (one from another module), half
and half (gpt_jax/default_tasks.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_continuation'
  return config
