"""QNLI (GLUE): does the sentence answer the question?"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'qnli'
  return config
