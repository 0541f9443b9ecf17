"""RACE-m: reading comprehension, middle-school exams; four options per question."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'race_middle'
  return config
