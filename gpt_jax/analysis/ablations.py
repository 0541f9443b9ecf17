"""Table 5 of the paper: the ablations, one row per variant, the paper's metric per task."""

import json

from gpt_jax.analysis.runs import PAPER_METRICS, FinetuneRun, check_same
from gpt_jax.errors import UserError

VARIANTS = ('full', 'no_pretraining', 'no_aux_lm', 'lstm')
ROW_NAMES = {
  'full': 'Transformer w/ aux LM (full)',
  'no_pretraining': 'Transformer w/o pre-training',
  'no_aux_lm': 'Transformer w/o aux LM',
  'lstm': 'LSTM w/ aux LM',
}
TASK_ORDER = tuple(PAPER_METRICS)
# Radford et al. 2018, table 5 (GLUE dev): average, then each task's metric.
PAPER_TABLE = {
  'full': dict(
    avg=74.7, cola=45.4, sst2=91.3, mrpc=82.3, stsb=82.0, qqp=70.3, mnli=81.8, qnli=88.1, rte=56.0
  ),
  'no_pretraining': dict(
    avg=59.9, cola=18.9, sst2=84.0, mrpc=79.4, stsb=30.9, qqp=65.5, mnli=75.7, qnli=71.2, rte=53.8
  ),
  'no_aux_lm': dict(
    avg=75.0, cola=47.9, sst2=92.0, mrpc=84.9, stsb=83.2, qqp=69.8, mnli=81.1, qnli=86.9, rte=54.4
  ),
  'lstm': dict(
    avg=69.1, cola=30.3, sst2=90.5, mrpc=83.2, stsb=71.8, qqp=68.1, mnli=73.7, qnli=81.1, rte=54.6
  ),
}


def table(runs: dict[str, list[FinetuneRun]]) -> dict:
  """{'tasks': [...], 'rows': {variant: {task: metric, 'avg': mean}}, 'paper': ...} from
  {variant: its runs}; each variant has at most one run per task, all of one model family."""
  tasks = sorted({run.task for group in runs.values() for run in group}, key=_task_rank)
  rows = {}
  for variant, group in runs.items():
    check_same(group, 'arch', f'ablation row {variant}')
    seen = [run.task for run in group]
    twice = sorted({task for task in seen if seen.count(task) > 1})
    if twice:
      raise UserError(f'ablation row {variant} has two runs of {", ".join(twice)}; give one each')
    row = {run.task: run.metric() for run in group}
    row['avg'] = sum(row.values()) / len(row)
    rows[variant] = row
  paper = {v: PAPER_TABLE[v] for v in rows if v in PAPER_TABLE}
  return {'tasks': tasks, 'rows': rows, 'paper': paper}


def _task_rank(task: str) -> tuple:
  return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def markdown(result: dict) -> str:
  """The table as Markdown: our row, and the paper's beside it where the paper has one."""
  tasks = result['tasks']
  lines = [
    '| Method | Avg | ' + ' | '.join(tasks) + ' |',
    '|---' * (len(tasks) + 2) + '|',
  ]
  for variant, row in result['rows'].items():
    name = ROW_NAMES.get(variant, variant)
    lines.append(
      f'| {name} | {row["avg"]:.1f} | ' + ' | '.join(_cell(row, t) for t in tasks) + ' |'
    )
    paper = result['paper'].get(variant)
    if paper:
      cells = ' | '.join(_cell(paper, t) for t in tasks)
      lines.append(f'| (paper) {name} | {paper["avg"]:.1f} | {cells} |')
  return '\n'.join(lines)


def _cell(row: dict, task: str) -> str:
  return f'{row[task]:.1f}' if task in row else '–'


def write(result: dict, out) -> None:
  out.write_text(json.dumps(result, indent=2) + '\n')
