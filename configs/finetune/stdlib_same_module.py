"""Offline default task, similarity: are two docstrings from the same module?

'same' or 'different', half and half (gpt_jax/tasks/stdlib.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_same_module'
  return config
