"""Offline default task, multiple choice: which of four sentences continues a passage?

The three others come from other modules (gpt_jax/default_tasks.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_next_sentence'
  config.task.seed = 0  # which examples, wrong texts and answer positions; not the split
  config.task.max_eval_examples = -1  # -1: all; N: the first N of validation and of test
  return config
