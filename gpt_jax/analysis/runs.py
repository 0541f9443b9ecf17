"""What the analyses read from finished runs: a fine-tuning workdir's task, variant and score."""

import dataclasses
import json

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError

# The paper's metric per GLUE task (table 5): summary keys averaged into one number.
PAPER_METRICS = {
  'cola': ('validation_mcc',),
  'sst2': ('validation_accuracy',),
  'mrpc': ('validation_f1',),
  'stsb': ('validation_pearson',),
  'qqp': ('validation_f1',),
  'mnli': ('validation_matched_accuracy', 'validation_mismatched_accuracy'),
  'qnli': ('validation_accuracy',),
  'rte': ('validation_accuracy',),
}


@dataclasses.dataclass(frozen=True)
class FinetuneRun:
  """One finished fine-tuning run, as the analyses see it."""

  workdir: str
  task: str
  arch: str  # model.arch of its config ('transformer' when it records none)
  variant: str  # full, no_pretraining, no_aux_lm or lstm (from its config)
  n_transfer: int | str
  init: str
  summary: dict

  def metric(self, scores: dict | None = None) -> float:
    """The paper's metric for the task (x 100), from `scores` (default: the best checkpoint's)."""
    scores = self.summary['best'] if scores is None else scores
    keys = PAPER_METRICS.get(self.task) or (next(k for k in scores if not k.startswith('train_')),)
    missing = [k for k in keys if k not in scores]
    if missing:
      raise UserError(f'{self.workdir}: its summary has no {", ".join(missing)}')
    return 100.0 * sum(scores[k] for k in keys) / len(keys)

  def train_metric(self) -> float | None:
    """The same metric on the fixed training subset (task.train_eval_examples), if scored."""
    scores = self.summary['best']
    first = next(k for k in scores if not k.startswith('train_'))
    splits = ('validation_matched_', 'validation_mismatched_', 'validation_')
    split = next((s for s in splits if first.startswith(s)), '')
    key = 'train_' + first[len(split) :]
    return 100.0 * scores[key] if key in scores else None


def _variant(arch: str, n_transfer, lm_coef: float) -> str:
  if arch != 'transformer':
    return arch
  if str(n_transfer) == '-1':
    return 'no_pretraining'
  return 'no_aux_lm' if lm_coef == 0 else 'full'


def read_run(workdir) -> FinetuneRun:
  """A finished fine-tuning workdir, from its summary.json (older runs: and their config)."""
  directory = workdir_lib.path(workdir)
  summary_file = directory / workdir_lib.SUMMARY_FILE
  if not summary_file.is_file():
    raise UserError(
      f'{directory} holds no {workdir_lib.SUMMARY_FILE}: not a finished fine-tuning run'
    )
  summary = json.loads(summary_file.read_text())
  if 'model_arch' not in summary:  # written before summaries recorded the run's set-up
    from gpt_jax import checkpoint

    config = checkpoint.load_config(directory)
    random_init = config.finetune.get('random_init', False)
    summary = {
      **summary,
      'model_arch': config.model.get('arch', 'transformer'),
      'n_transfer': -1 if random_init else config.finetune.get('n_transfer', 'all'),
      'lm_coef': config.finetune.lm_coef,
    }
  arch, n_transfer = summary['model_arch'], summary['n_transfer']
  return FinetuneRun(
    str(directory),
    summary['task'],
    arch,
    _variant(arch, n_transfer, summary['lm_coef']),
    n_transfer,
    _init_source(summary['init']),
    summary,
  )


def _init_source(described: str) -> str:
  """The directory a summary's 'init' names ('checkpoint in DIR: the embeddings ...')."""
  for marker in ('tokenizer of ', ' in '):
    if marker in described:
      described = described.split(marker, 1)[1]
      break
  return described.split(': the embeddings', 1)[0].removesuffix(')')


def check_same(runs, field: str, what: str) -> None:
  """One line when `runs` differ in `field` (an analysis compares like with like)."""
  values = sorted({str(getattr(run, field)) for run in runs})
  if len(values) > 1:
    raise UserError(f'{what}: the runs differ in {field} ({", ".join(values)}); give runs of one')
