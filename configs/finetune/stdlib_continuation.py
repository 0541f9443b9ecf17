"""Offline default task, entailment: does a sentence continue a docstring passage?

'continues' (the next sentence of its docstring) or 'unrelated' (one from another module), half
and half (gpt_jax/tasks/stdlib.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_continuation'
  return config
