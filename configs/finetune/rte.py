"""RTE (GLUE): does the premise entail the hypothesis?"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'rte'
  return config
