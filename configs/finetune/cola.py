"""CoLA (GLUE): is the sentence grammatical? Scored by Matthews correlation."""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'cola'
  config.task.acceptability = True  # the zero-shot probe: thresholded mean log-probability
  return config
