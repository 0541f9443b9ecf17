"""SciTail: does a science premise entail the hypothesis?"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'scitail'
  return config
