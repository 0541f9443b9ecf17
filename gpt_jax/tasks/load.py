"""`load_task`: the task a config's `task` section names, from whichever source holds it."""

from gpt_jax.errors import UserError
from gpt_jax.tasks import files, registry, stdlib
from gpt_jax.tasks.task import Task, TaskShape


def _local_task(task_config, needs_train: bool) -> Task:
  needed = ('kind', 'train', 'validation') if needs_train else ('kind', 'validation')
  missing = [field for field in needed if not task_config[field]]
  if missing:
    raise UserError(
      f'task.name=local needs task.{", task.".join(missing)}: the task kind and '
      'the files of each split (see configs/finetune/local.py)'
    )
  labels = (
    tuple(label.strip() for label in task_config.labels.split(',')) if task_config.labels else None
  )
  verbalizer = task_config.get('verbalizer', '')
  if labels is None and verbalizer and not task_config.train:  # the verbaliser names the classes
    labels = tuple(pair.split(':')[0].strip() for pair in verbalizer.split(','))
  return files.load_local_task(
    task_config.kind,
    task_config.train or None,
    task_config.validation,
    task_config.test or None,
    labels=labels,
    regression=task_config.regression,
  )


def load_task(task_config, needs_train: bool = True) -> Task:
  """The task a config's `task` section names (fields: configs/finetune/base.py).

  task.name is a registry task ('sst2' or 'glue/sst2', read from task.data_dir),
  'local' (the user's files: task.kind, train, validation, test, labels,
  regression; see gpt_jax/tasks/files.py), or an offline default task
  (gpt_jax/tasks/stdlib.py; optional task.seed and task.max_eval_examples).
  With `needs_train=False` (zero-shot probes) a local task may leave out its
  train file; its classes then come from task.labels or task.verbalizer.
  """
  name = task_config.name
  if name == 'local':
    return _local_task(task_config, needs_train)
  if name in stdlib.DEFAULT_TASKS:
    return stdlib.load_default_task(
      name,
      seed=task_config.get('seed', 0),
      max_train_examples=task_config.max_train_examples,
      max_eval_examples=task_config.get('max_eval_examples', -1),
    )
  if name in registry.REGISTRY_NAMES:
    return registry.load_tfds_task(registry.REGISTRY_NAMES[name], task_config.data_dir or None)
  raise UserError(
    f'unknown task.name {name!r}; use a registry task '
    f'({", ".join(registry.TFDS_TASKS)}), an offline default task '
    f'({", ".join(stdlib.DEFAULT_TASKS)}) or local (your own files)'
  )


def load_task_shape(task_config) -> TaskShape:
  """The model and batch shapes of the task a config names.

  A registry task's come from the registry, so a dry run needs no prepared
  dataset; the other sources are read (they are local).
  """
  if task_config.name in registry.REGISTRY_NAMES:
    return registry.tfds_task_shape(registry.REGISTRY_NAMES[task_config.name])
  return load_task(task_config).shape
