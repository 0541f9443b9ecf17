"""STS-B (GLUE): a similarity score from 0 to 5, regressed; scored by Pearson and Spearman."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.update(name='stsb', regression=True)
  return config
