"""The `gpt-jax` command: one mode per sub-command, each a small function.

    gpt-jax pretrain --config configs/tiny.py --workdir /tmp/run [--config.model.n_layer=2 ...]

Every config field can be overridden with `--config.<path>=<value>`. Mistakes a
user can fix are reported in one line (add --traceback for the details) with a
non-zero exit code.
"""

import argparse
import functools
import os
import sys

from gpt_jax.errors import UserError
from gpt_jax.paths import workdir_path

_EPILOG = """config overrides:
  --config.<field>=<value>   set any field of the config file, e.g. --config.model.n_layer=2
                             --config.train.num_steps=100 --config.mesh.fsdp=-1

Run `gpt-jax <mode> --help` for the flags of one mode."""


def _add_config_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
  parser.add_argument('--config', default=default, required=default is None,
                      help='config file (configs/tiny.py) or shipped config name (tiny, gpt1)'
                      + (f'; default {default}' if default else ''))


def _add_resumable_config_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', help='config file (configs/tiny.py) or shipped config name '
                      '(tiny, gpt1); omit it to resume with the config stored in --workdir')


def _add_workdir_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
  parser.add_argument('--workdir', required=required,
                      help='directory for checkpoints, logs and metrics of this run')


def _add_profile_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--profile', nargs='?', const='10:5', metavar='START:COUNT',
                      help='write a JAX profiler trace of COUNT steps from step START to '
                      'WORKDIR/profile (view in TensorBoard or Perfetto); default 10:5')


def _add_dry_run_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--dry_run', action='store_true',
                      help='train nothing: compile the sharded train step for --topology and '
                      'report per-chip memory, FLOPs and whether it fits (needs libtpu, '
                      'pip install "gpt_jax[tpu]"; no TPU)')
  parser.add_argument('--topology', help='TPU slice for --dry_run, e.g. v5e:2x4 (v5e-8), '
                      'v4:2x2x1 (v4-8), v5e:8x8 (v5e-64)')


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  from gpt_jax import distributed
  distributed.add_flags(parser)


def _pretrain(args, overrides) -> None:
  """Pretrains a GPT on next-token prediction; rerun on the same --workdir to resume."""
  if args.dry_run or args.topology:
    _dry_run(args, overrides)
    return
  from gpt_jax import distributed
  distributed.initialize_from_args(args)  # before anything asks JAX for its devices
  import jax

  from gpt_jax import checkpoint
  from gpt_jax import config as config_lib
  from gpt_jax import train
  from gpt_jax.data import workflow
  from gpt_jax.report import RunLog

  if args.workdir is None:
    raise UserError('pretrain needs --workdir (only --dry_run runs without one)')
  workdir = workdir_path(args.workdir)  # local, or gs:// for TPU pods
  if args.config is None:
    config = checkpoint.load_config(workdir)
    for override in overrides:
      config_lib.apply_override(config, override)
  else:
    config = config_lib.load_config(args.config, overrides)
  data = workflow.pretrain_data(config)
  checkpoint.check_workdir(workdir)
  log = RunLog(workdir)  # only once the inputs are known to be good: no stray workdirs
  if jax.process_index() == 0:
    data.tokenizer.copy_to(workdir)  # the run can always decode its own ids
  try:
    result = train.run_pretraining(config, workdir, data.train_batches, data.eval_batches,
                                   data.train_tokens, log, _profile_window(args.profile))
  finally:
    log.close()  # flushes TensorBoard and draws curves.png, also after an error
  if result['preempted']:
    return
  log.info(f'done: eval loss {result["eval"]["loss"]:.4f} | '
           f'perplexity {result["eval"]["perplexity"]:.2f} | unigram entropy of the corpus '
           f'{data.store.unigram_entropy():.4f} nats | curves in {workdir / "curves.png"}')


def _profile_window(text: str | None) -> tuple[int, int] | None:
  if text is None:
    return None
  try:
    start, count = (int(part) for part in text.split(':'))
  except ValueError:
    raise UserError(f'--profile {text!r}: expected START:COUNT, e.g. --profile 10:5') from None
  return start, count


def _dry_run(args, overrides) -> None:
  """Compiles the pretraining step for a TPU slice this machine lacks; fails if it won't fit."""
  from gpt_jax import config as config_lib
  from gpt_jax import dryrun

  if not (args.dry_run and args.topology and args.config):
    raise UserError('a dry run needs --dry_run, --topology and --config, e.g. '
                    'gpt-jax pretrain --config configs/gpt1_v5e_8.py --dry_run --topology v5e:2x4')
  report = dryrun.dry_run(config_lib.load_config(args.config, overrides), args.topology)
  print(report.table())
  if not report.fits:
    raise UserError(f'{args.config} does not fit on {args.topology}; shrink the per-chip share: '
                    'model.remat=True, optim.grad_accum_steps > 1, or shard the state over '
                    'more chips with mesh.fsdp')


def _tokenizer(args, overrides) -> None:
  """Trains the config's BPE tokenizer (model.vocab_size pieces) on its corpus (data.corpus)."""
  from gpt_jax import config as config_lib
  from gpt_jax import distributed
  from gpt_jax.data import workflow

  distributed.initialize_from_args(args)  # several processes: process 0 trains, all wait
  workflow.train_tokenizer(config_lib.load_config(args.config, overrides))


def _prepare(args, overrides) -> None:
  """Tokenises the config's corpus once into a token store that pretraining reads."""
  from gpt_jax import config as config_lib
  from gpt_jax import distributed
  from gpt_jax.data import workflow

  distributed.initialize_from_args(args)  # several processes: each writes its share of shards
  workflow.prepare(config_lib.load_config(args.config, overrides))


def _finetune(args, overrides) -> None:
  """Fine-tunes a pretrained GPT on a task (the paper's input transformations + linear head)."""
  from gpt_jax import checkpoint
  from gpt_jax import config as config_lib
  from gpt_jax import distributed, finetune
  from gpt_jax.report import RunLog

  distributed.initialize_from_args(args)  # before anything asks JAX for its devices
  if args.init:
    overrides = [f'finetune.init={args.init}', *overrides]
  config = config_lib.load_config(args.config, overrides)
  checkpoint.check_workdir(args.workdir)
  log = RunLog(args.workdir)
  try:
    result = finetune.run_finetuning(config, args.workdir, log)
  finally:
    log.close()
  log.info('best validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in result['best'].items()))


def _add_init_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--init', help='pretraining workdir or Hugging Face directory to start '
                      'from (sets config.finetune.init)')


def _sample(args, overrides) -> None:
  """Continues prompts with a trained GPT and prints prompt + continuation for each."""
  from gpt_jax import sample
  from gpt_jax.data.tokenizer import Tokenizer

  if overrides:
    raise UserError(f'sample takes no config overrides (got --config.{overrides[0]}); the '
                    'model comes from --workdir')
  prompts = list(args.prompt or [])
  if args.prompts_file:
    path = workdir_path(args.prompts_file)
    if not path.is_file():
      raise UserError(f'--prompts_file {path} does not exist')
    prompts += [line for line in path.read_text().splitlines() if line.strip()]
  if not prompts:
    raise UserError('give at least one --prompt TEXT or a --prompts_file with one prompt a line')
  tokenizer = Tokenizer(args.tokenizer or workdir_path(args.workdir) / 'tokenizer.model')
  params, model_config = sample.load_decoder(args.workdir)
  continuations = sample.generate_text(
      params, model_config, tokenizer, prompts, args.max_new_tokens,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
      stop_tokens=[tokenizer.eod_id], seed=args.seed)
  for index, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    if index:
      print('-' * 40)
    print(prompt + continuation)


def _export(args, overrides) -> None:
  """Writes a workdir's newest decoder weights as a Hugging Face openai-gpt directory."""
  from gpt_jax import hf, sample

  if overrides:
    raise UserError(f'export takes no config overrides (got --config.{overrides[0]})')
  params, model_config = sample.load_decoder(args.workdir)
  tokenizer = workdir_path(args.workdir) / 'tokenizer.model'
  out = hf.export_hf_dir(params, model_config, args.out,
                         tokenizer if tokenizer.is_file() else None)
  print(f'wrote {out}: load it with transformers.OpenAIGPTLMHeadModel.from_pretrained("{out}")')


def _add_export_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', required=True,
                      help='pretraining or fine-tuning workdir (its newest checkpoint)')
  parser.add_argument('--out', required=True,
                      help='Hugging Face directory to create (must not exist or be empty)')


def _add_sample_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', required=True, help='pretraining or fine-tuning workdir, or '
                      'a Hugging Face openai-gpt directory (e.g. from `gpt-jax export`)')
  parser.add_argument('--prompt', action='append', help='text to continue (repeatable)')
  parser.add_argument('--prompts_file', help='UTF-8 file with one prompt a line')
  parser.add_argument('--tokenizer', help='sentencepiece model; default WORKDIR/tokenizer.model')
  parser.add_argument('--max_new_tokens', type=int, default=100,
                      help='tokens to add to each prompt (fewer at end of document)')
  parser.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  parser.add_argument('--top_k', type=int, default=0,
                      help='sample among the k most likely tokens (0 = all)')
  parser.add_argument('--top_p', type=float, default=1.0,
                      help='nucleus sampling: the most likely tokens up to this mass (1 = all)')
  parser.add_argument('--seed', type=int, default=0)


# mode name -> (function, help, flag adders)
MODES = {
    'tokenizer': (_tokenizer, 'train the BPE tokenizer of a config on its corpus',
                  [_add_config_flags, _add_distributed_flags]),
    'prepare': (_prepare, 'tokenise the corpus of a config into its token store',
                [_add_config_flags, _add_distributed_flags]),
    'pretrain': (_pretrain, 'pretrain a GPT on a text corpus (next-token prediction)',
                 [_add_resumable_config_flags,
                  functools.partial(_add_workdir_flag, required=False), _add_dry_run_flags,
                  _add_profile_flag, _add_distributed_flags]),
    'finetune': (_finetune, 'fine-tune on a classification / entailment / similarity / '
                 'multiple-choice task', [_add_config_flags, _add_workdir_flag, _add_init_flag,
                                            _add_distributed_flags]),
    'sample': (_sample, 'continue text prompts with a trained GPT (KV-cache decoding)',
               [_add_sample_flags]),
    'export': (_export, 'write a workdir as a Hugging Face openai-gpt directory (safetensors)',
               [_add_export_flags]),
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
