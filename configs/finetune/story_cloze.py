"""Story Cloze (2016): which of two endings finishes a four-sentence story.

TFDS cannot download it: see gpt_jax/task_data.py for the manual download.
"""

import base


def get_config():
  config = base.get_config()
  config.task.name = 'story_cloze'
  return config
