"""The `gpt-jax` command: one mode per sub-command, each a small function.

    gpt-jax pretrain --config configs/tiny.py --workdir /tmp/run [--config.model.n_layer=2 ...]

Every config field can be overridden with `--config.<path>=<value>`. Mistakes a
user can fix are reported in one line (add --traceback for the details) with a
non-zero exit code.
"""

import argparse
import contextlib
import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError

_EPILOG = """config overrides (modes that take a config):
  --config.<field>=<value>   set any field of the config file, e.g. --config.model.n_layer=2
                             --config.train.num_steps=100 --config.mesh.fsdp=-1
  --print_config             print the resolved config (after overrides) and exit

Run `gpt-jax <mode> --help` for the flags of one mode and the config sections it reads."""

# The config sections each mode reads (the fields are documented in configs/gpt1.py and
# configs/finetune/base.py).
_SECTIONS = {
  'tokenizer': 'model.vocab_size, data',
  'prepare': 'model.vocab_size, data',
  'pretrain': 'model, train, optim, data, mesh, checkpoint, report',
  'finetune': 'model (numerics and dropout; the shape comes from --init), train, optim, task, '
  'finetune, mesh, checkpoint, report',
}


def _mode_epilog(mode: str) -> str:
  return f'config sections read: {_SECTIONS[mode]}\n\n{_EPILOG}'


def _add_print_config_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--print_config',
    action='store_true',
    help='print the resolved config (after overrides) and exit',
  )


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--config',
    required=True,
    help='shipped config name (tiny, gpt1, finetune/sst2) or a config file',
  )
  _add_print_config_flag(parser)


def _add_resumable_config_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--config',
    help='shipped config name (tiny, gpt1) or a config file; omit '
    'it to resume with the config stored in --workdir',
  )
  _add_print_config_flag(parser)


def _resolved_config(args, overrides):
  """The mode's config after overrides; with --print_config, printed, and then None."""
  from gpt_jax import config as config_lib

  config = config_lib.load_config(args.config, overrides)
  if args.print_config:
    print(config)
    return None
  return config


def _add_workdir_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
  parser.add_argument(
    '--workdir', required=required, help='directory for checkpoints, logs and metrics of this run'
  )


def _add_profile_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--profile',
    nargs='?',
    const='10:5',
    metavar='START:COUNT',
    help='write a JAX profiler trace of COUNT steps from step START to '
    'WORKDIR/profile (view in TensorBoard or Perfetto); default 10:5',
  )


def _add_dry_run_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--dry_run',
    action='store_true',
    help='train nothing: compile the sharded train step for --topology and '
    'report per-chip memory, FLOPs and whether it fits (needs libtpu, '
    'pip install "gpt_jax[tpu]"; no TPU)',
  )
  parser.add_argument(
    '--topology',
    help='TPU slice for --dry_run, e.g. v5e:2x4 (v5e-8), v4:2x2x1 (v4-8), v5e:8x8 (v5e-64)',
  )


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  from gpt_jax import distributed

  distributed.add_flags(parser)


def _pretrain(args, overrides) -> None:
  """Pretrains a GPT on next-token prediction; rerun on the same --workdir to resume."""
  if args.dry_run or args.topology:
    _dry_run(args, overrides)
    return
  from gpt_jax import distributed

  # Before anything asks JAX for its devices (reading a stored config does).
  distributed.initialize_from_args(args)
  config = _pretrain_config(args, overrides)
  if config is None:
    return
  import jax

  from gpt_jax import compile_cache, pretrain, tracking
  from gpt_jax.data import workflow
  from gpt_jax.report import RunLog

  workdir = workdir_lib.path(args.workdir)  # local, or gs:// for TPU pods
  compile_cache.enable(config)
  data = workflow.pretrain_data(config)
  workdir_lib.check_workdir(workdir)
  with _workdir_lease(config, workdir):  # before the run writes anything there
    # Only once the inputs are known to be good: no stray workdirs.
    log = RunLog(workdir, trackers=tracking.trackers(config, workdir))
    if jax.process_index() == 0:
      data.tokenizer.copy_to(workdir)  # the run can always decode its own ids
    try:
      result = pretrain.run_pretraining(
        config,
        workdir,
        data.train_batches,
        data.eval_batches,
        data.train_tokens,
        log,
        _profile_window(args.profile),
        _pretraining_probes(config, data),
      )
    except BaseException:
      # Flushes TensorBoard and draws curves.png after an error too; on a full disk that may
      # fail as well, and the run's own error is the one to report.
      with contextlib.suppress(OSError):
        log.close()
      raise
    log.close()
  if result['preempted']:
    return
  log.info(
    f'done: eval loss {result["eval"]["loss"]:.4f} | '
    f'perplexity {result["eval"]["perplexity"]:.2f} | unigram entropy of the corpus '
    f'{data.store.unigram_entropy():.4f} nats | curves in {workdir / "curves.png"}'
  )


def _workdir_lease(config, workdir):
  """The workdir's lease (gpt_jax.lease), held while a run writes there."""
  from gpt_jax import checkpoint, lease

  checkpoint_config = checkpoint.CheckpointConfig.from_config(config.checkpoint)
  return lease.hold(
    workdir, checkpoint_config.lease_heartbeat_s, checkpoint_config.lease_stale_after_s
  )


def _pretraining_probes(config, data):
  """train.zero_shot's probes (gpt_jax.probes), or None when it names none."""
  if not config.train.get('zero_shot', ''):
    return None
  from gpt_jax import pretrain, probes, sharding
  from gpt_jax.model import ModelConfig

  model_config = ModelConfig.from_config(config.model)
  return probes.PretrainingProbes(
    config.train,
    model_config,
    data.tokenizer,
    sharding.make_mesh(config.mesh),
    model_config.n_ctx,  # as `eval --zero_shot` scores: the same numbers
    pretrain.resolve_num_steps(config.train, data.train_tokens),
  )


def _pretrain_config(args, overrides):
  """--config with overrides, or (without --config) the config stored in --workdir."""
  from gpt_jax import checkpoint
  from gpt_jax import config as config_lib

  if args.config is not None:
    return _resolved_config(args, overrides)
  if args.workdir is None:
    raise UserError('pretrain needs --config, or --workdir of a run to resume')
  config = checkpoint.load_config(args.workdir)
  for override in overrides:
    config_lib.apply_override(config, override)
  if args.print_config:
    print(config)
    return None
  return config


def _profile_window(text: str | None) -> tuple[int, int] | None:
  if text is None:
    return None
  try:
    start, count = (int(part) for part in text.split(':'))
  except ValueError:
    raise UserError(f'--profile {text!r}: expected START:COUNT, e.g. --profile 10:5') from None
  return start, count


# mode -> (dry-run function name in gpt_jax.dryrun, an example config)
_DRY_RUNS = {
  'pretrain': ('dry_run', 'configs/gpt1_v5e_8.py'),
  'finetune': ('finetune_dry_run', 'finetune/race_middle'),
}


def _dry_run(args, overrides) -> None:
  """Compiles the mode's train step for a TPU slice this machine lacks; fails if it won't fit."""
  from gpt_jax import config as config_lib
  from gpt_jax import dryrun

  function, example = _DRY_RUNS[args.mode]
  if not (args.dry_run and args.topology and args.config):
    raise UserError(
      'a dry run needs --dry_run, --topology and --config, e.g. '
      f'gpt-jax {args.mode} --config {example} --dry_run --topology v5e:2x4'
    )
  report = getattr(dryrun, function)(config_lib.load_config(args.config, overrides), args.topology)
  print(report.table())
  if not report.fits:
    raise UserError(
      f'{args.config} does not fit on {args.topology}; shrink the per-chip share: '
      'model.remat=full, optim.grad_accum_steps > 1, or shard the state over '
      'more chips with mesh.fsdp'
    )


def _tokenizer(args, overrides) -> None:
  """Trains the config's BPE tokenizer (model.vocab_size pieces) on its corpus (data.corpus)."""
  config = _resolved_config(args, overrides)
  if config is not None:
    from gpt_jax import distributed
    from gpt_jax.data import workflow

    distributed.initialize_from_args(args)  # several processes: process 0 trains, all wait
    workflow.train_tokenizer(config)


def _prepare(args, overrides) -> None:
  """Tokenises the config's corpus once into a token store that pretraining reads; run again,
  it verifies the store and rebuilds only damaged shards (--verify: only check)."""
  config = _resolved_config(args, overrides)
  if config is not None:
    from gpt_jax import distributed
    from gpt_jax.data import workflow

    distributed.initialize_from_args(args)  # several processes: each writes its share of shards
    (workflow.verify if args.verify else workflow.prepare)(config)


def _add_verify_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--verify',
    action='store_true',
    help='check the prepared store (sizes, block checksums, token ids) and change nothing',
  )


def _finetune(args, overrides) -> None:
  """Fine-tunes a pretrained GPT on a task (the paper's input transformations + linear head)."""
  if args.dry_run or args.topology:
    _dry_run(args, overrides)
    return
  if args.init:
    overrides = [f'finetune.init={args.init}', *overrides]
  config = _resolved_config(args, overrides)
  if config is None:
    return
  from gpt_jax import distributed

  distributed.initialize_from_args(args)  # before anything asks JAX for its devices

  from gpt_jax import compile_cache, finetune, tracking
  from gpt_jax.report import RunLog

  if args.workdir is None:
    raise UserError('finetune needs --workdir (only --print_config runs without one)')
  compile_cache.enable(config)
  workdir_lib.check_workdir(args.workdir)
  with _workdir_lease(config, args.workdir):  # before the run writes anything there
    log = RunLog(args.workdir, trackers=tracking.trackers(config, args.workdir))
    try:
      result = finetune.run_finetuning(config, args.workdir, log)
    finally:
      log.close()
  if not result.get('preempted'):
    log.info('best validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in result['best'].items()))


def _add_init_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--init',
    help='pretraining workdir or Hugging Face directory to start from (sets config.finetune.init)',
  )


def _sample(args, overrides) -> None:
  """Continues prompts with a trained GPT and prints prompt + continuation for each."""
  from gpt_jax import compile_cache, sample
  from gpt_jax.data.tokenizer import Tokenizer
  from gpt_jax.weights import load_weights

  _no_overrides('sample', overrides)
  prompts = list(args.prompt or [])
  if args.prompts_file:
    path = workdir_lib.path(args.prompts_file)
    if not path.is_file():
      raise UserError(f'--prompts_file {path} does not exist')
    prompts += [line for line in path.read_text().splitlines() if line.strip()]
  if not prompts:
    raise UserError('give at least one --prompt TEXT or a --prompts_file with one prompt a line')
  compile_cache.enable()
  weights = load_weights(args.workdir, tokenizer_required=args.tokenizer is None, flag='--workdir')
  tokenizer = Tokenizer(args.tokenizer) if args.tokenizer else weights.text_tokenizer()
  continuations = sample.generate_text(
    weights.params,
    weights.model_config,
    tokenizer,
    prompts,
    args.max_new_tokens,
    temperature=args.temperature,
    top_k=args.top_k,
    top_p=args.top_p,
    stop_tokens=[] if tokenizer.eod_id is None else [tokenizer.eod_id],
    seed=args.seed,
  )
  for index, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    if index:
      print('-' * 40)
    print(prompt + continuation)


def _export(args, overrides) -> None:
  """Writes a workdir's newest decoder weights as a Hugging Face openai-gpt directory."""
  from gpt_jax import hf
  from gpt_jax.weights import load_weights

  _no_overrides('export', overrides)
  weights = load_weights(args.workdir, tokenizer_required=False, flag='--workdir')
  out = hf.export_hf_dir(weights.params, weights.model_config, args.out, weights.tokenizer)
  print(f'wrote {out}: load it with transformers.OpenAIGPTLMHeadModel.from_pretrained("{out}")')


def _eval(args, overrides) -> None:
  """Scores a model: loss, perplexity and bits per byte on text; a task zero-shot (the paper's
  probes); or a fine-tuning workdir on any split or file of its task, with the task's metrics."""
  import json

  if bool(args.workdir) == bool(args.init):
    raise UserError('eval needs exactly one of --workdir (a gpt_jax run) or --init (any weights)')
  from gpt_jax import distributed

  distributed.initialize_from_args(args)  # before anything asks JAX for its devices
  import jax

  from gpt_jax import checkpoint

  stored = checkpoint.load_config(args.workdir) if args.workdir else None
  if args.zero_shot:
    result = _eval_zero_shot(args, overrides)
  elif stored is not None and 'task' in stored:  # a fine-tuning workdir
    result = _eval_finetuned(args, overrides, stored)
  else:
    result = _eval_text(args, overrides, stored)
  out = workdir_lib.path(args.out or workdir_lib.path(args.workdir or '.') / 'eval.json')
  if jax.process_index() == 0:
    out.write_text(json.dumps(result, indent=2) + '\n')
  if 'splits' in result:
    for split, scores in result['splits'].items():
      print(
        f'{result["task"]} {split}: '
        + ' | '.join(
          f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in scores.items()
        )
      )
    print(f'wrote {out}')
  else:
    print(
      f'loss {result["loss"]:.4f} | perplexity {result["perplexity"]:.2f} | bits per byte '
      f'{result["bits_per_byte"]:.4f} | {result["tokens_scored"]:,} tokens | wrote {out}'
    )


def _eval_text(args, overrides, config) -> dict:
  """Loss, perplexity and bits per byte on a corpus split or a text/jsonl file."""
  from gpt_jax import evaluation, sharding
  from gpt_jax.scoring import Scorer
  from gpt_jax.weights import load_weights

  _no_overrides('eval', overrides)
  weights = load_weights(args.workdir or args.init, flag='--workdir' if args.workdir else '--init')
  if args.text:
    tokens, text_bytes = evaluation.token_stream(
      weights.tokenizer, evaluation.read_documents(args.text)
    )
  elif config is not None:
    tokens, text_bytes = _corpus_split(config, weights.tokenizer, args.split or 'validation')
  else:
    raise UserError('--init has no corpus of its own: give --text FILE (.txt or .jsonl)')
  seq_len = _eval_seq_len(args, weights, config.train.seq_len if config else 0)
  mesh = sharding.make_mesh(config.mesh if config else dict(data=-1, fsdp=1, tensor=1))
  scorer = Scorer(weights.params, weights.model_config, mesh, args.batch_size, seq_len)
  result = evaluation.evaluate_stream(
    scorer, tokens, text_bytes, stride=args.stride or seq_len, max_windows=args.max_windows
  )
  return {
    **result,
    'source': weights.source,
    'text': args.text or f'{args.split or "validation"} split',
  }


def _eval_seq_len(args, weights, default: int) -> int:
  seq_len = args.seq_len or default or weights.model_config.n_ctx
  if seq_len > weights.model_config.n_ctx:
    raise UserError(f'--seq_len {seq_len} exceeds the model context {weights.model_config.n_ctx}')
  return seq_len


def _eval_zero_shot(args, overrides) -> dict:
  """The paper's zero-shot probe of the --config task on the language model alone."""
  from gpt_jax import config as config_lib
  from gpt_jax import evaluation, sharding
  from gpt_jax.weights import load_weights

  if not args.config:
    raise UserError(
      '--zero_shot needs --config naming the task (finetune/sst2, finetune/local '
      'with --config.task.validation=FILE --config.task.verbalizer=...)'
    )
  config = config_lib.load_config(args.config, overrides)
  weights = load_weights(
    args.workdir or args.init, flag='--workdir' if args.workdir else '--init', step=args.step
  )
  result = evaluation.zero_shot_task(
    weights,
    config,
    sharding.make_mesh(config.mesh),
    batch_size=args.batch_size,
    seq_len=_eval_seq_len(args, weights, 0),
    split=args.split,
    task_file=args.task_file,
  )
  return {**result, 'source': weights.source, 'step': args.step}


def _eval_finetuned(args, overrides, config) -> dict:
  """A fine-tuning workdir's best checkpoint on its task's splits or a task file."""
  from gpt_jax import config as config_lib
  from gpt_jax import evaluation, sharding

  if args.config:
    raise UserError(
      'a fine-tuning --workdir brings its own task config; override fields with '
      '--config.task.FIELD=VALUE, or add --zero_shot for the zero-shot probe'
    )
  for override in overrides:
    config_lib.apply_override(config, override)
  return evaluation.finetuned_task(
    workdir_lib.path(args.workdir),
    config,
    sharding.make_mesh(config.mesh),
    batch_size=args.batch_size,
    split=args.split,
    task_file=args.task_file,
  )


def _corpus_split(config, tokenizer, split: str):
  """(tokens, UTF-8 bytes) of one split of the run's token store."""
  from gpt_jax.data import corpora, workflow
  from gpt_jax.data import store as store_lib

  directory = workflow.store_path(config, corpora.open_corpus(config.data), tokenizer)
  store = store_lib.TokenStore(directory)  # one line if missing or incomplete, saying how
  if split not in store.meta['splits']:
    raise UserError(f'--split {split}: the store has {sorted(store.meta["splits"])}')
  return store.tokens(split).all(), store.meta['splits'][split]['text_bytes']


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', help='gpt_jax workdir: its model, tokenizer, corpus and mesh')
  parser.add_argument('--init', help='any weights: Hugging Face dir, OpenAI release, hf:ORG/NAME')
  parser.add_argument(
    '--split',
    help="corpus split of --workdir's run (default validation); "
    'with a task: one of its splits (default: every validation split)',
  )
  parser.add_argument('--text', help='a .txt file (one document) or .jsonl ("text" per line)')
  parser.add_argument(
    '--zero_shot',
    action='store_true',
    help="score the --config task with the language model alone (the paper's zero-shot probes)",
  )
  parser.add_argument('--config', help='the task of --zero_shot (finetune/sst2, finetune/local)')
  parser.add_argument(
    '--step', type=int, help='--zero_shot: the --workdir checkpoint to probe (default: newest)'
  )
  parser.add_argument(
    '--task_file',
    help='a task file (.jsonl/.csv/.tsv) to score instead of '
    "the task's splits (fine-tuning workdirs and --zero_shot)",
  )
  parser.add_argument(
    '--seq_len',
    type=int,
    default=0,
    help="window length (default: the run's train.seq_len, else n_ctx)",
  )
  parser.add_argument(
    '--stride',
    type=int,
    default=0,
    help='tokens between window starts (default seq_len: no overlap)',
  )
  parser.add_argument('--max_windows', type=int, default=0, help='score only the first N windows')
  parser.add_argument(
    '--batch_size', type=int, default=8, help='rows per batch (windows, answers or examples)'
  )
  parser.add_argument('--out', help='where to write eval.json (default WORKDIR/eval.json)')


def _glue_submission(args, overrides) -> None:
  """Zips the GLUE test predictions of fine-tuning workdirs into one leaderboard upload."""
  from gpt_jax import glue

  _no_overrides('glue-submission', overrides)
  out, missing = glue.make_submission(args.workdirs, args.out, partial=args.partial)
  print(
    f'wrote {out}'
    + (
      f' without {", ".join(missing)}'
      if missing
      else ': every file GLUE expects; upload it at gluebenchmark.com'
    )
  )


def _add_glue_submission_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--workdirs',
    nargs='+',
    required=True,
    help='fine-tuning workdirs of GLUE tasks (cola, sst2, mrpc, stsb, qqp, '
    "mnli, qnli, rte); MNLI's also holds AX.tsv",
  )
  parser.add_argument('--out', default='glue_submission.zip', help='the zip to write')
  parser.add_argument(
    '--partial', action='store_true', help='zip the files there are even if some task is missing'
  )


def _no_overrides(mode: str, overrides: list[str]) -> None:
  if overrides:
    raise UserError(
      f'{mode} takes no config overrides (got --config.{overrides[0]}); the model '
      'and its settings come from --workdir'
    )


def _add_export_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--workdir', required=True, help='pretraining or fine-tuning workdir (its newest checkpoint)'
  )
  parser.add_argument(
    '--out', required=True, help='Hugging Face directory to create (must not exist or be empty)'
  )


def _add_sample_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--workdir',
    required=True,
    help='pretraining or fine-tuning workdir, or '
    'a Hugging Face openai-gpt directory (e.g. from `gpt-jax export`)',
  )
  parser.add_argument('--prompt', action='append', help='text to continue (repeatable)')
  parser.add_argument('--prompts_file', help='UTF-8 file with one prompt a line')
  parser.add_argument('--tokenizer', help='sentencepiece model; default WORKDIR/tokenizer.model')
  parser.add_argument(
    '--max_new_tokens',
    type=int,
    default=100,
    help='tokens to add to each prompt (fewer at end of document)',
  )
  parser.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  parser.add_argument(
    '--top_k', type=int, default=0, help='sample among the k most likely tokens (0 = all)'
  )
  parser.add_argument(
    '--top_p',
    type=float,
    default=1.0,
    help='nucleus sampling: the most likely tokens up to this mass (1 = all)',
  )
  parser.add_argument('--seed', type=int, default=0)


def _analysis(args, overrides) -> None:
  """The paper's section 5: layers transferred and zero-shot probes (figure 2), ablations
  (table 5), drawn as PNG and written as JSON / Markdown from runs (or, for layers, a sweep)."""
  from gpt_jax.analysis import commands

  commands.COMMANDS[args.analysis](args, overrides)


def _add_analysis_flags(parser: argparse.ArgumentParser) -> None:
  from gpt_jax.analysis import commands

  commands.add_flags(parser)


# mode name -> (function of (args, config overrides), help, flag adders)
MODES: dict[str, tuple[Callable[..., None], str, list[Callable[..., None]]]] = {
  'tokenizer': (
    _tokenizer,
    'train the BPE tokenizer of a config on its corpus',
    [_add_config_flags, _add_distributed_flags],
  ),
  'prepare': (
    _prepare,
    'tokenise the corpus of a config into its token store',
    [_add_config_flags, _add_verify_flag, _add_distributed_flags],
  ),
  'pretrain': (
    _pretrain,
    'pretrain a GPT on a text corpus (next-token prediction)',
    [
      _add_resumable_config_flags,
      functools.partial(_add_workdir_flag, required=False),
      _add_dry_run_flags,
      _add_profile_flag,
      _add_distributed_flags,
    ],
  ),
  'finetune': (
    _finetune,
    'fine-tune on a classification / entailment / similarity / multiple-choice task',
    [
      _add_config_flags,
      functools.partial(_add_workdir_flag, required=False),
      _add_init_flag,
      _add_dry_run_flags,
      _add_distributed_flags,
    ],
  ),
  'sample': (
    _sample,
    'continue text prompts with a trained GPT (KV-cache decoding)',
    [_add_sample_flags],
  ),
  'eval': (
    _eval,
    'loss, perplexity and bits per byte on text; zero-shot task probes; a '
    'fine-tuned model on its task',
    [_add_eval_flags, _add_distributed_flags],
  ),
  'export': (
    _export,
    'write a workdir as a Hugging Face openai-gpt directory (safetensors)',
    [_add_export_flags],
  ),
  'analysis': (
    _analysis,
    "the paper's section 5: layers transferred, zero-shot curves, the ablation table",
    [_add_analysis_flags],
  ),
  'glue-submission': (
    _glue_submission,
    'zip the GLUE test predictions of fine-tuning runs for the leaderboard',
    [_add_glue_submission_flags],
  ),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='gpt-jax',
    description='GPT-1 (Radford et al. 2018) in JAX/Flax: pretraining, '
    'fine-tuning and sampling from a laptop CPU to a TPU pod.',
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--traceback',
    action='store_true',
    help='show the full traceback of an error instead of one line',
  )
  parser.add_argument(
    '--version', action='version', version=f'gpt-jax {importlib.metadata.version("gpt_jax")}'
  )
  modes = parser.add_subparsers(dest='mode', metavar='MODE', required=True)
  for name, (function, help_text, flag_adders) in MODES.items():
    sub = modes.add_parser(
      name,
      help=help_text,
      description=function.__doc__,
      epilog=_mode_epilog(name) if name in _SECTIONS else None,
      formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        overrides.append(arg[len('--config.') :])
      elif i + 1 < len(argv):
        overrides.append(f'{arg[len("--config.") :]}={argv[i + 1]}')
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
    from gpt_jax import distributed, gpu_flags, storage

    storage.configure()  # again, to report a bad GPT_JAX_STORAGE_TIMEOUT_S in one line
    distributed.skip_absent_tpu()  # before any mode starts JAX
    gpu_flags.set_gpu_flags()
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
