"""MRPC (GLUE): are two news sentences paraphrases? Scored by F1 and accuracy."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'mrpc'
  return config
