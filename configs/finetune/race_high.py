"""RACE-h: reading comprehension, high-school exams; four options per question."""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'race_high'
  return config
