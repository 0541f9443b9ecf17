"""Fine-tuning tasks: what a task is, the paper's input transformations, and where tasks come from.

Modules, each importing only those above it in this list:
  task        the Task type and the four task kinds
  metrics     task metrics and the majority-class baseline
  transforms  the four input transformations and the fine-tuning loss
  batches     encoded batches for the fine-tuning loop
  registry    the paper's tasks as TFDS datasets
  files       the user's own JSONL / CSV / TSV files
  stdlib      offline default tasks from the standard library's docstrings
  load        `load_task`: a config's task section -> Task
"""
