"""SST-2 (GLUE): the sentiment of a movie-review sentence."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'sst2'
  # The paper's zero-shot probe: append "very", compare "negative" with "positive".
  config.task.update(prompt='{text} very', verbalizer='negative:negative,positive:positive')
  return config
