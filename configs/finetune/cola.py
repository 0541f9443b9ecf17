"""CoLA (GLUE): is the sentence grammatical? Scored by Matthews correlation."""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'cola'
  return config
