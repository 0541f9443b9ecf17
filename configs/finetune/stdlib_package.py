"""Offline default task, classification: which standard-library package a docstring is from.

asyncio, email, importlib, multiprocessing, unittest or xml (gpt_jax/tasks/stdlib.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_package'
  return config
