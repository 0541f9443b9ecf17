"""Offline default task, multiple choice: which of four sentences continues a passage?

The three others come from other modules (gpt_jax/default_tasks.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_next_sentence'
  return config
