"""Your own task: one JSONL, CSV or TSV file per split (schema: gpt_jax/tasks/files.py).

  gpt-jax finetune --config configs/finetune/local.py --init WORKDIR \
    --config.task.kind=classification --config.task.train=train.jsonl \
    --config.task.validation=dev.jsonl [--config.task.test=test.jsonl]

One example per JSON line (or CSV row under a header row):
  classification   {"text": "...", "label": "positive"}
  entailment       {"premise": "...", "hypothesis": "...", "label": "entailment"}
  similarity       {"text_a": "...", "text_b": "...", "label": "paraphrase"}
                   (task.regression=True: the label is a number, e.g. 3.8)
  multiple_choice  {"context": "...", "choices": ["...", "..."], "label": 1}
                   (the 0-based index of the right choice; CSV: choice_0, choice_1, ...)
"""

from gpt_jax.configs.finetune import base


def get_config():
  config = base.get_config()
  config.task.update(
    name='local',
    kind='classification',  # classification, entailment, similarity or multiple_choice
    train='',  # required: the training file
    validation='',  # required: scored every epoch, selects the best checkpoint
    test='',  # optional: predicted at the end; its labels may be left out
    labels='',  # comma-separated class labels; '' takes the sorted labels of the train file
    regression=False,  # similarity / classification with a numeric label
  )
  return config
