"""Figure 2 of the paper as PNG + JSON: accuracy against the number of layers transferred
(left), and the zero-shot probes' relative performance over pretraining updates (right)."""

import json

from gpt_jax import workdir as workdir_lib
from gpt_jax.analysis.runs import FinetuneRun, check_same
from gpt_jax.errors import UserError


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')  # files only, no display
  import matplotlib.pyplot as plt

  return plt


def layers_data(runs: list[FinetuneRun]) -> dict:
  """{'task', 'layers': [...], 'dev': [...], 'train': [...]}: one point per n_transfer."""
  if not runs:
    raise UserError('analysis layers: no finished runs to plot')
  check_same(runs, 'task', 'analysis layers')
  check_same(runs, 'init', 'analysis layers')
  check_same(runs, 'arch', 'analysis layers')
  unknown = [run.workdir for run in runs if not str(run.n_transfer).lstrip('-').isdigit()]
  if unknown:
    raise UserError(f'analysis layers: {unknown[0]} does not record its n_transfer; rerun it')
  points = sorted(((int(run.n_transfer), run) for run in runs), key=lambda p: p[0])
  return {
    'task': runs[0].task,
    'init': runs[0].init,
    'layers': [k for k, _ in points],
    'dev': [run.metric() for _, run in points],
    'train': [run.train_metric() for _, run in points],
  }


def draw_layers(data: dict, out) -> None:
  """Figure 2 (left): dev solid, train dashed, against the layers transferred."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(4.5, 3.2), dpi=100)
  line = axes.plot(data['layers'], data['dev'], '-o', label=f'{data["task"]} dev')[0]
  if any(value is not None for value in data['train']):
    points = [(k, v) for k, v in zip(data['layers'], data['train']) if v is not None]
    axes.plot(*zip(*points), '--o', color=line.get_color(), label=f'{data["task"]} train')
  axes.set(xlabel='layers transferred', ylabel='score (x100)')
  axes.legend()
  figure.tight_layout()
  figure.savefig(out)
  plt.close(figure)


def zero_shot_data(workdirs, references: dict | None = None) -> dict:
  """{workdir: {'arch', 'probes': {name: {'steps', 'score', 'chance', 'relative'}}}} from the
  'zero_shot' records of pretraining runs' metrics.jsonl. relative = (score - chance) /
  (reference - chance), reference per probe from `references` (default 1.0, a perfect score)."""
  from gpt_jax import checkpoint
  from gpt_jax.report import read_metrics

  result = {}
  for workdir in workdirs:
    directory = workdir_lib.path(workdir)
    records = [r for r in read_metrics(directory / 'metrics.jsonl') if r['split'] == 'zero_shot']
    if not records:
      raise UserError(
        f'{directory} logged no zero-shot probes: pretrain with --config.train.zero_shot=...'
      )
    arch = checkpoint.load_config(directory).model.get('arch', 'transformer')
    names = [k[: -len('_chance')] for k in records[0] if k.endswith('_chance')]
    probes = {}
    for name in names:
      chance = records[0][f'{name}_chance']
      reference = (references or {}).get(name.rsplit('_', 1)[0], 1.0)
      scores = [r[name] for r in records]
      probes[name] = {
        'steps': [r['step'] for r in records],
        'score': scores,
        'chance': chance,
        'relative': [(s - chance) / (reference - chance) for s in scores],
      }
    result[str(directory)] = {'arch': arch, 'probes': probes}
  return result


def draw_zero_shot(data: dict, out) -> None:
  """Figure 2 (right): each probe's relative score against updates (log axis); Transformer
  runs solid, LSTM runs dashed."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(4.5, 3.2), dpi=100)
  for run in data.values():
    style = '--' if run['arch'] == 'lstm' else '-'
    for name, probe in run['probes'].items():
      axes.plot(
        probe['steps'], probe['relative'], style, marker='.', label=f'{name} ({run["arch"]})'
      )
  axes.set_xscale('log')
  axes.axhline(0.0, color='grey', linewidth=0.5)
  axes.set(xlabel='pretraining updates', ylabel='relative score (0 = chance)')
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(out)
  plt.close(figure)


def write_json(data: dict, out) -> None:
  out.write_text(json.dumps(data, indent=2) + '\n')
