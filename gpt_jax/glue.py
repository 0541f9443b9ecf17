"""GLUE leaderboard submissions: the prediction files and the zip the server takes.

Each fine-tuning run on a GLUE task writes its test predictions (finetune.py,
through `write_predictions`): one `index<TAB>prediction` row per example, in
`idx` order. `make_submission` collects them from the runs' workdirs into one
zip with the eleven files the server expects:

  CoLA, SST-2, MRPC, STS-B, QQP, MNLI-m, MNLI-mm, QNLI, RTE  from their fine-tuning runs
  AX (the diagnostic set)                                    from the MNLI run
  WNLI                                                       the majority class, as the
                                                             paper and BERT submitted it

and names what is missing.
"""

import zipfile

from etils import epath

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError, warn
from gpt_jax.tasks.task import Task

# GLUE's server wants label names for these tasks (AX from MNLI) and 0/1 or a score elsewhere.
_NAMED_LABEL_TASKS = ('mnli', 'qnli', 'rte')

# Every file of a complete upload, with the task whose run writes it.
GLUE_FILES = {
  'CoLA.tsv': 'cola',
  'SST-2.tsv': 'sst2',
  'MRPC.tsv': 'mrpc',
  'STS-B.tsv': 'stsb',
  'QQP.tsv': 'qqp',
  'MNLI-m.tsv': 'mnli',
  'MNLI-mm.tsv': 'mnli',
  'QNLI.tsv': 'qnli',
  'RTE.tsv': 'rte',
  'AX.tsv': 'mnli (with glue/ax prepared)',
  'WNLI.tsv': None,
}

# GLUE's WNLI test set: 146 examples, idx 0..145. Nobody fine-tunes on it (its train and
# dev sets are adversarial to each other); predicting class 0 (not_entailment) everywhere
# scores the 65.1 % GLUE lists as its majority baseline.
WNLI_TEST_EXAMPLES = 146
WNLI_PREDICTION = 0


def _write_rows(path, rows) -> None:
  temporary = path.parent / (path.name + '.tmp')
  temporary.write_text('\n'.join(['index\tprediction', *rows]) + '\n')
  temporary.rename(path)  # never a half-written submission


def write_predictions(path, task: Task, examples, predictions) -> None:
  """One `index<TAB>prediction` row per example, sorted by index, as GLUE's server reads them.

  TFDS stores GLUE's test examples in hash order; each carries its `idx`.
  """
  if task.regression:
    shown = [f'{p:.3f}' for p in predictions]
  elif task.labels and task.name.split('/')[-1] in _NAMED_LABEL_TASKS:
    shown = [task.labels[int(p)] for p in predictions]
  else:
    shown = [str(int(p)) for p in predictions]
  indices = [int(examples[i]['index']) for i in range(len(shown))]
  _write_rows(path, [f'{index}\t{p}' for index, p in sorted(zip(indices, shown))])


def _found_files(workdirs) -> dict:
  """{file name: path} of the GLUE files in `workdirs`; a file in two of them is an error."""
  found: dict[str, epath.Path] = {}
  for workdir in workdirs:
    directory = workdir_lib.path(workdir)
    if not directory.is_dir():
      raise UserError(f'--workdirs: {workdir} is not a directory')
    for name in GLUE_FILES:
      path = directory / name
      if not path.is_file():
        continue
      if name in found:
        raise UserError(
          f'{name} is in both {found[name].parent} and {directory}; pass only '
          'the workdir of the run to submit'
        )
      found[name] = path
  return found


def make_submission(workdirs, out, *, partial: bool = False) -> tuple[str, list[str]]:
  """Zips the GLUE files of `workdirs` (plus WNLI) into `out`; returns (out, missing files).

  An incomplete set is an error naming the missing files and the tasks to
  fine-tune, unless `partial`, which zips what there is with a warning.
  """
  found = _found_files(workdirs)
  missing = [name for name in GLUE_FILES if name not in found and GLUE_FILES[name]]
  if missing:
    message = 'the submission lacks ' + ', '.join(
      f'{name} (fine-tune {GLUE_FILES[name]})' for name in missing
    )
    if not partial:
      raise UserError(f'{message}; add those workdirs, or --partial to zip the rest')
    warn(message)
  out = workdir_lib.path(out)
  temporary = out.parent / (out.name + '.tmp')
  with temporary.open('wb') as file, zipfile.ZipFile(file, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name in GLUE_FILES:  # the server's order, for a readable listing
      if name in found:
        archive.writestr(name, found[name].read_text())
    if 'WNLI.tsv' not in found:
      rows = [f'{i}\t{WNLI_PREDICTION}' for i in range(WNLI_TEST_EXAMPLES)]
      archive.writestr('WNLI.tsv', '\n'.join(['index\tprediction', *rows]) + '\n')
  temporary.rename(out)
  return str(out), missing
