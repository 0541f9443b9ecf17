"""Offline default task, multiple choice: which of four sentences continues a passage?

The three others come from other modules (gpt_jax/tasks/stdlib.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_next_sentence'
  return config
