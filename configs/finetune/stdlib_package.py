"""Offline default task, classification: which standard-library package a docstring is from.

asyncio, email, importlib, multiprocessing, unittest or xml (gpt_jax/tasks/stdlib.py).

Built from this Python's standard library in seconds: nothing to download or prepare.
"""

from gpt_jax.configs.finetune import base
from gpt_jax.tasks import stdlib


def get_config():
  config = base.get_config()
  config.task.name = 'stdlib_package'
  # A zero-shot probe: the likeliest package name after the docstring (gpt_jax/zero_shot.py).
  config.task.update(
    prompt='{text} Package:',
    verbalizer=','.join(f'{name}:{name}' for name in stdlib.PACKAGES),
  )
  return config
