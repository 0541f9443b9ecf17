"""The `gpt-jax` command: one mode per sub-command, each a small function.

    gpt-jax pretrain --config configs/tiny.py --workdir /tmp/run [--config.model.n_layer=2 ...]

Every config field can be overridden with `--config.<path>=<value>`. Mistakes a
user can fix are reported in one line (add --traceback for the details) with a
non-zero exit code.
"""

import argparse
import os
import sys
from pathlib import Path

from gpt_jax.errors import UserError

_EPILOG = """config overrides:
  --config.<field>=<value>   set any field of the config file, e.g. --config.model.n_layer=2
                             --config.train.num_steps=100 --config.mesh.fsdp=-1

Run `gpt-jax <mode> --help` for the flags of one mode."""


def _add_config_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
  parser.add_argument('--config', default=default, required=default is None,
                      help='config file (configs/tiny.py) or shipped config name (tiny, gpt1)'
                      + (f'; default {default}' if default else ''))


def _add_workdir_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', required=True,
                      help='directory for checkpoints, logs and metrics of this run')


def _pretrain(args, overrides) -> None:
  """Pretrains a GPT on next-token prediction."""
  from gpt_jax import config as config_lib
  from gpt_jax import train
  from gpt_jax.report import RunLog

  config = config_lib.load_config(args.config, overrides)
  workdir = Path(args.workdir)
  train_batches, eval_batches, train_tokens = _placeholder_text_data(config)
  log = RunLog(workdir)  # only once the inputs are known to be good: no stray workdirs
  result = train.run_pretraining(config, workdir, train_batches, eval_batches, train_tokens, log)
  log.info(f'done: eval loss {result["eval"]["loss"]:.4f} | '
           f'perplexity {result["eval"]["perplexity"]:.2f}')


def _placeholder_text_data(config):
  """Byte-level windows of a local text file (stand-in until the data pipeline lands)."""
  import jax
  import numpy as np

  path = Path(config.data.text_file)
  if not config.data.text_file or not path.is_file():
    raise UserError(f'data.text_file={config.data.text_file!r} is not a file; '
                    'pass --config.data.text_file=PATH to a UTF-8 text file')
  tokens = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int32)
  split = int(len(tokens) * 0.9)
  local_batch = config.train.batch_size // jax.process_count()
  window = config.train.seq_len + 1
  if split - window <= 0 or len(tokens) - split - window <= 0:
    raise UserError(f'{path} is too small for windows of {window} bytes')

  def batches(data, seed):
    rng = np.random.default_rng(seed)
    while True:
      starts = rng.integers(0, len(data) - window, local_batch)
      yield np.stack([data[s:s + window] for s in starts])

  def eval_batches():
    it = batches(tokens[split:], 1234)
    return [next(it) for _ in range(config.train.eval_batches)]

  return batches(tokens[:split], config.train.seed), eval_batches, split


# mode name -> (function, help, flag adders)
MODES = {
    'pretrain': (_pretrain, 'pretrain a GPT on a text corpus (next-token prediction)',
                 [_add_config_flags, _add_workdir_flag]),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='gpt-jax', description='GPT-1 (Radford et al. 2018) in JAX/Flax: pretraining, '
      'fine-tuning and sampling from a laptop CPU to a TPU pod.',
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--traceback', action='store_true',
                      help='show the full traceback of an error instead of one line')
  modes = parser.add_subparsers(dest='mode', metavar='MODE', required=True)
  for name, (function, help_text, flag_adders) in MODES.items():
    sub = modes.add_parser(name, help=help_text, description=function.__doc__, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument('--traceback', action='store_true', help=argparse.SUPPRESS)
    for add in flag_adders:
      add(sub)
    sub.set_defaults(run=function)
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` / `--config.a.b v` overrides from ordinary flags."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      if '=' in arg:
        overrides.append(arg[len('--config.'):])
      elif i + 1 < len(argv):
        overrides.append(f'{arg[len("--config."):]}={argv[i + 1]}')
        i += 1
      else:
        raise UserError(f'{arg} needs a value, e.g. {arg}=2')
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  show_traceback = '--traceback' in argv or bool(os.environ.get('GPT_JAX_TRACEBACK'))
  try:
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    args.run(args, overrides)
  except (UserError, FileNotFoundError) as error:
    if show_traceback:
      raise
    print(f'gpt-jax: error: {error}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('gpt-jax: interrupted', file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
