"""DPRD, the Definite Pronoun Resolution Dataset (Rahman & Ng 2012): zero-shot only.

  gpt-jax eval --zero_shot --config finetune/dprd --init WEIGHTS

The paper's substitution probe (gpt_jax/zero_shot.py) on its test split: each candidate
antecedent is put in the pronoun's place and the rest of the sentence is scored. Prepare
it once: `tfds build definite_pronoun_resolution --data_dir=DATA_DIR
--file_format=array_record`. Your own pronoun files: configs/finetune/local.py with
task.kind=pronoun (schema: gpt_jax/tasks/files.py).
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.name = 'dprd'
  return config
