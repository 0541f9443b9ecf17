"""SNLI: entailment, neutral or contradiction of image-caption pairs."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'snli'
  return config
