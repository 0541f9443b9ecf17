"""`gpt-jax analysis layers | zero-shot | ablations`: run or collect, then draw and tabulate."""

from gpt_jax import workdir as workdir_lib
from gpt_jax.analysis import ablations, figures, runs
from gpt_jax.errors import UserError


def _layer_range(text: str) -> list[int]:
  """'0:12' -> 0 ... 12 (both ends); '-1:3'; or a comma-separated list."""
  try:
    if ':' in text:
      first, last = (int(part) for part in text.split(':'))
      return list(range(first, last + 1))
    return [int(part) for part in text.split(',')]
  except ValueError:
    raise UserError(f'--layers {text!r}: expected FIRST:LAST (0:12) or a list (0,6,12)') from None


def layers(args, overrides) -> None:
  """Fine-tunes --config from --init once per n_transfer in --layers (skipping finished runs
  under --workdir), then draws accuracy against the layers transferred."""
  from gpt_jax import config as config_lib
  from gpt_jax import finetune
  from gpt_jax.report import RunLog

  if not (args.config and args.init and args.workdir):
    raise UserError('analysis layers needs --config TASK, --init WEIGHTS and --workdir SWEEP_DIR')
  root = workdir_lib.path(args.workdir)
  finished = []
  for count in _layer_range(args.layers):
    workdir = root / f'n_transfer_{count}'
    if not (workdir / workdir_lib.SUMMARY_FILE).is_file():
      config = config_lib.load_config(
        args.config, [f'finetune.init={args.init}', f'finetune.n_transfer={count}', *overrides]
      )
      log = RunLog(workdir)
      try:
        finetune.run_finetuning(config, workdir, log)
      finally:
        log.close()
    finished.append(runs.read_run(workdir))
  data = figures.layers_data(finished)
  _write(args, 'layers', data, figures.draw_layers)


def zero_shot(args, overrides) -> None:
  """Draws the zero-shot probes that pretraining runs (--workdirs) logged, over their updates."""
  _no_overrides(overrides)
  references = dict(_pair(item) for item in args.reference or [])
  data = figures.zero_shot_data(args.workdirs, references)
  _write(args, 'zero_shot', data, figures.draw_zero_shot)


def ablation_table(args, overrides) -> None:
  """Prints table 5 for the given fine-tuning runs (--runs [VARIANT=]DIR ...)."""
  _no_overrides(overrides)
  grouped: dict[str, list] = {}
  for item in args.runs:
    variant, _, directory = item.rpartition('=')
    run = runs.read_run(directory)
    grouped.setdefault(variant or run.variant, []).append(run)
  result = ablations.table(grouped)
  print(ablations.markdown(result))
  out = _out_dir(args) / 'ablations.json'
  ablations.write(result, out)
  (out.with_suffix('.md')).write_text(ablations.markdown(result) + '\n')
  print(f'wrote {out} and {out.with_suffix(".md")}')


def _pair(text: str) -> tuple[str, float]:
  name, _, value = text.partition('=')
  try:
    return name, float(value)
  except ValueError:
    raise UserError(f'--reference {text!r}: expected PROBE=SCORE, e.g. sst2=0.9') from None


def _no_overrides(overrides) -> None:
  if overrides:
    raise UserError(f'this analysis reads finished runs; --config.{overrides[0]} changes nothing')


def _out_dir(args):
  out = workdir_lib.path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  return out


def _write(args, name: str, data: dict, draw) -> None:
  out = _out_dir(args)
  figures.write_json(data, out / f'{name}.json')
  draw(data, out / f'{name}.png')
  print(f'wrote {out / f"{name}.png"} and {out / f"{name}.json"}')


COMMANDS = {'layers': layers, 'zero-shot': zero_shot, 'ablations': ablation_table}


def add_flags(parser) -> None:
  parser.add_argument('analysis', choices=sorted(COMMANDS), help='which of the three analyses')
  parser.add_argument('--config', help='layers: the task config to fine-tune (finetune/mnli)')
  parser.add_argument('--init', help='layers: the pretrained weights every run starts from')
  parser.add_argument('--workdir', help='layers: where the sweep runs go (one per n_transfer)')
  parser.add_argument('--layers', default='0:12', help='layers: n_transfer values, FIRST:LAST')
  parser.add_argument('--workdirs', nargs='+', default=[], help='zero-shot: pretraining runs')
  parser.add_argument('--reference', nargs='*', help='zero-shot: PROBE=SCORE that counts as 1')
  parser.add_argument('--runs', nargs='+', default=[], help='ablations: [VARIANT=]FINETUNE_DIR')
  parser.add_argument('--out', default='analysis', help='directory for the PNG, JSON and Markdown')
