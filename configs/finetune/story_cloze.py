"""Story Cloze (2016): which of two endings finishes a four-sentence story.

TFDS cannot download it: see gpt_jax/tasks/registry.py for the manual download.
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'story_cloze'
  return config
