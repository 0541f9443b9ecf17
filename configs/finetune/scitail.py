"""SciTail: does a science premise entail the hypothesis?"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'scitail'
  return config
