"""MNLI (GLUE): entailment, neutral or contradiction; validated on matched and mismatched."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'mnli'
  return config
