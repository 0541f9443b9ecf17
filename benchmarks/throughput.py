"""Training-step throughput: gpt_jax against Hugging Face's PyTorch OpenAIGPTLMHeadModel.

Each framework runs in its own worker process (separate thread pools, separate
peak-memory figures), one process at a time: a round starts a fresh worker of
each contender in turn (first call, --warmup untimed steps, --steps timed
ones), and the rounds repeat, so every contender sees the same drift in machine
load. One at a time because resident side by side at paper size they need more
than this 24 GB machine has, and the reclaim under that pressure slowed
whichever process page-faulted most; a user trains with one of them at a time
too. The median round counts. Every step is a full training
step: forward, backward, gradient clipping and an AdamW update, float32 unless
--dtype bfloat16. gpt_jax runs as the config runs on a CPU: its train.steps_per_call
updates per compiled call (8 for every shipped config on a CPU; --steps_per_call
overrides it; steps and warmup round up to whole calls).
PyTorch runs at its best: all cores, fused AdamW, and torch.compile as a second
contender.

    python benchmarks/throughput.py --configs tiny,small,gpt1 [--dtype bfloat16] [--json out.json]
        [--rounds 3 --steps 2 --warmup 2] [--steps_per_call K]
        [--baseline DIR]   # also time another checkout's gpt_jax in each round: before/after

Prints tokens/s, the ratio gpt_jax / PyTorch (against PyTorch's faster variant),
achieved FLOP/s, MFU against the measured matmul peak of this machine (the best
of XLA's and PyTorch's float32 matmul), peak memory and the first call's time
(compile and that call's steps).
"""

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

# (batch, seq_len) per config: the configs' own sizes, shrunk where a CPU step would take minutes.
SHAPES = {'tiny': (16, 128), 'small': (16, 256), 'gpt1': (4, 512)}


def _model_sizes(config_name: str, vocab_size: int | None) -> dict:
  from gpt_jax.config import load_config

  model = load_config(config_name).model
  if vocab_size:
    model.vocab_size = vocab_size
  return dict(model)


def _steps_per_call(config_name: str, requested: int | None) -> int:
  """--steps_per_call, or what the config's own train.steps_per_call runs on a CPU."""
  from gpt_jax import loop
  from gpt_jax.config import load_config

  if requested is not None:
    return requested
  return loop.updates_per_call(load_config(config_name).train.steps_per_call, 'cpu')


def _matmul_peak_torch(torch, device, dtype, size=2048, repeats=5):
  a = torch.ones(size, size, device=device, dtype=dtype)
  (a @ a).sum().item()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    (a @ a).sum().item()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def _model_fields(model_config_class, model: dict) -> dict:
  """`model` as the ModelConfig of the imported gpt_jax takes it: an older tree (--baseline)
  lacks later fields (left out, so at their defaults) and had a boolean remat."""
  fields = {field.name for field in dataclasses.fields(model_config_class)}
  model = {key: value for key, value in model.items() if key in fields}
  if 'remat' in model and isinstance(model_config_class.remat, bool):
    model['remat'] = model['remat'] != 'none'
  return model


def make_jax_step(spec):
  """(step, trainer): step() runs one call of spec['steps_per_call'] (default 1) gpt_jax
  training steps and returns its metrics, unwaited. A --baseline tree older than
  Trainer.train_steps runs one step per call; step.updates_per_call says which."""
  import jax
  import ml_collections
  import numpy as np

  from gpt_jax import sharding, train
  from gpt_jax.model import ModelConfig

  model_config = ModelConfig.from_config(
    {**_model_fields(ModelConfig, spec['model']), 'dtype': spec['dtype']}
  )
  optim = ml_collections.ConfigDict(
    dict(
      learning_rate=2.5e-4,
      schedule='cosine',
      warmup_steps=10,
      warmup_fraction=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,
      clip_norm=1.0,
      grad_accum_steps=1,
    )
  )
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  _, trainer = train.make_pretrainer(model_config, optim, mesh, spec['seq_len'], 10**6)
  state = trainer.init(jax.random.key(0))
  per_call = spec.get('steps_per_call', 1) if hasattr(trainer, 'train_steps') else 1
  rows = (
    np.random.default_rng(0)
    .integers(0, model_config.vocab_size, (per_call, spec['batch'], spec['seq_len'] + 1))
    .astype(np.int32)
  )
  if per_call == 1:
    batch, run_call = sharding.global_batch(rows[0], mesh), trainer.train_step
  else:
    batch, run_call = sharding.global_batch(rows, mesh, steps_axis=True), trainer.train_steps

  def step():
    nonlocal state
    state, step_metrics = run_call(state, batch)
    return step_metrics

  step.updates_per_call = per_call
  return step, trainer


def jax_worker(spec, conn):
  if spec.get('source_tree'):  # --baseline: time that checkout's gpt_jax instead of this one
    sys.path.insert(0, spec['source_tree'])
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gpt_jax import flops

  step, _ = make_jax_step(spec)
  start = time.perf_counter()
  jax.block_until_ready(step())
  conn.send(
    {
      'compile_s': time.perf_counter() - start,
      'matmul_peak': flops.measure_matmul_peak(jnp.float32),
      'device': jax.devices()[0].device_kind,
      'steps_per_call': step.updates_per_call,
    }
  )
  last = serve_timed_steps(conn, step, jax.block_until_ready)
  conn.send(
    {
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'loss': float(np.ravel(last['loss'])[-1]),
    }
  )  # a call's last


def make_torch_step(spec):
  """(step, model): step() runs one PyTorch training step of Hugging Face's
  OpenAIGPTLMHeadModel and returns the loss."""
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  m = spec['model']
  config = transformers.OpenAIGPTConfig(
    vocab_size=m['vocab_size'],
    n_positions=m['n_ctx'],
    n_embd=m['n_embd'],
    n_layer=m['n_layer'],
    n_head=m['n_head'],
    afn='gelu',
    resid_pdrop=m['resid_pdrop'],
    embd_pdrop=m['embd_pdrop'],
    attn_pdrop=m['attn_pdrop'],
    layer_norm_epsilon=m['layer_norm_epsilon'],
  )
  model = transformers.OpenAIGPTLMHeadModel(config).to(device).train()
  # The paper's decoupled weight decay: matrices only, as on the JAX side.
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
  no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
  groups = [{'params': decay, 'weight_decay': 0.01}, {'params': no_decay, 'weight_decay': 0.0}]
  try:
    optimizer = torch.optim.AdamW(groups, lr=2.5e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
  except (RuntimeError, TypeError):
    optimizer = torch.optim.AdamW(groups, lr=2.5e-4, betas=(0.9, 0.999), eps=1e-8, foreach=True)
  tokens = torch.randint(0, m['vocab_size'], (spec['batch'], spec['seq_len']), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec['dtype'] == 'bfloat16')

  def forward_backward():
    with autocast:
      loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    return loss

  if spec['compile']:
    forward_backward = torch.compile(forward_backward)

  def step():
    loss = forward_backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return step, model


def torch_worker(spec, conn):
  import torch

  step, _ = make_torch_step(spec)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  start = time.perf_counter()
  loss = step().item()
  conn.send(
    {
      'compile_s': time.perf_counter() - start,
      'matmul_peak': _matmul_peak_torch(torch, device, torch.float32),
      'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
      'steps_per_call': 1,
    }
  )
  loss = serve_timed_steps(conn, step, lambda loss: loss.item())
  conn.send(
    {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'loss': loss}
  )


def serve_timed_steps(conn, step, wait):
  """Runs `step` (a call) as many times as the parent asks, answering each round's seconds,
  until 'stop'; returns the last call's result after `wait` (which blocks until it is done)."""
  result = None
  while (message := conn.recv()) != 'stop':
    start = time.perf_counter()
    for _ in range(message):
      result = step()
    result = wait(result)
    conn.send(time.perf_counter() - start)
  return result


def _start(target, spec):
  context = multiprocessing.get_context('spawn')
  parent, child = context.Pipe()
  process = context.Process(target=target, args=(spec, child), daemon=True)
  process.start()
  return process, parent


def _phase(target, spec, warmup: int, steps: int):
  """One fresh worker: its first (compiling) call, `warmup` untimed steps (allocators and
  caches settle), then `steps` timed ones, each rounded up to whole calls. Returns (its
  first-call info, the timed seconds per step, its final message)."""
  process, conn = _start(target, spec)
  info = conn.recv()
  per_call = info['steps_per_call']
  if warmup:
    conn.send(math.ceil(warmup / per_call))
    conn.recv()
  calls = math.ceil(steps / per_call)
  conn.send(calls)
  seconds = conn.recv()
  conn.send('stop')
  final = conn.recv()
  process.join()
  return info, seconds / (calls * per_call), final


def benchmark(config_name: str, args) -> dict:
  from gpt_jax import flops
  from gpt_jax.model import ModelConfig

  batch, seq_len = SHAPES.get(config_name, (args.batch or 8, args.seq_len or 128))
  batch, seq_len = args.batch or batch, args.seq_len or seq_len
  model = _model_sizes(config_name, args.vocab_size)
  spec = dict(model=model, batch=batch, seq_len=seq_len, dtype=args.dtype)
  jax_spec = {**spec, 'steps_per_call': _steps_per_call(config_name, args.steps_per_call)}
  contenders = {
    'gpt_jax': (jax_worker, jax_spec),
    'torch': (torch_worker, {**spec, 'compile': False}),
  }
  if args.torch_compile:
    contenders['torch.compile'] = (torch_worker, {**spec, 'compile': True})
  if args.baseline:
    contenders[f'gpt_jax@{Path(args.baseline).name}'] = (
      jax_worker,
      {**jax_spec, 'source_tree': str(Path(args.baseline).resolve())},
    )
  timings = {name: [] for name in contenders}
  first_info, last_final, peak_mb = {}, {}, {}
  for round_index in range(args.rounds):
    for name, (target, worker_spec) in contenders.items():
      info, step_s, final = _phase(target, worker_spec, args.warmup, args.steps)
      timings[name].append(step_s)
      first_info.setdefault(name, info)  # compile time and matmul peak: from the first process
      last_final[name] = final
      peak_mb[name] = max(peak_mb.get(name, 0), final['peak_rss_mb'])
      print(
        f'  {config_name}: round {round_index + 1}/{args.rounds} {name} '
        f'{1e3 * step_s:,.0f} ms/step (first call of {info["steps_per_call"]} '
        f'step(s) {info["compile_s"]:.1f}s)',
        flush=True,
      )
  tokens = batch * seq_len
  flops = flops.train_flops_per_token(ModelConfig.from_config(model), seq_len) * tokens
  peak = max(info['matmul_peak'] for info in first_info.values())
  results = {}
  for name, info in first_info.items():
    step_s = statistics.median(timings[name])
    results[name] = dict(
      step_s=step_s,
      tokens_per_s=tokens / step_s,
      flops_per_s=flops / step_s,
      steps_per_call=info['steps_per_call'],
      mfu=flops / step_s / peak,
      compile_s=info['compile_s'],
      matmul_peak=info['matmul_peak'],
      device=info['device'],
      **{**last_final[name], 'peak_rss_mb': peak_mb[name]},
    )
  best_torch = max(v['tokens_per_s'] for k, v in results.items() if k.startswith('torch'))
  for result in results.values():
    result['ratio_vs_torch'] = result['tokens_per_s'] / best_torch
  return dict(
    config=config_name,
    batch=batch,
    seq_len=seq_len,
    dtype=args.dtype,
    model=model,
    peak_flops=peak,
    results=results,
  )


def _print(report):
  print(
    f'\n{report["config"]}: batch {report["batch"]} x {report["seq_len"]} tokens, '
    f'{report["dtype"]}, peak {report["peak_flops"] / 1e12:.3f} TFLOP/s (measured matmul)'
  )
  print(
    f'  {"":18s} {"tokens/s":>10s} {"step ms":>9s} {"vs torch":>8s} {"TFLOP/s":>8s} '
    f'{"MFU":>6s} {"peak MB":>8s} {"steps/call":>10s} {"first call s":>12s}'
  )
  for name, r in report['results'].items():
    print(
      f'  {name:18s} {r["tokens_per_s"]:10,.0f} {1e3 * r["step_s"]:9.1f} '
      f'{r["ratio_vs_torch"]:7.2f}x {r["flops_per_s"] / 1e12:8.3f} {100 * r["mfu"]:5.1f}% '
      f'{r["peak_rss_mb"]:8,.0f} {r["steps_per_call"]:10d} {r["compile_s"]:12.1f}'
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--configs', default='tiny,small,gpt1', help='comma-separated config names from configs/'
  )
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--batch', type=int, help='override the batch size of every config')
  parser.add_argument('--seq_len', type=int, help='override the sequence length')
  parser.add_argument('--vocab_size', type=int, help='override the vocabulary size')
  parser.add_argument('--steps', type=int, default=3, help='timed steps per round and framework')
  parser.add_argument(
    '--warmup', type=int, default=2, help='untimed steps after the first, per round and framework'
  )
  parser.add_argument(
    '--steps_per_call',
    type=int,
    help="gpt_jax's updates per compiled call (default: the config's train.steps_per_call "
    'as a CPU run resolves it, 8 for the shipped configs); steps and warmup round up to '
    'whole calls',
  )
  parser.add_argument(
    '--rounds', type=int, default=3, help='rounds: a fresh worker of each contender per round'
  )
  parser.add_argument(
    '--torch_compile',
    action=argparse.BooleanOptionalAction,
    default=True,
    help='also time torch.compile (default on)',
  )
  parser.add_argument(
    '--baseline',
    help='another checkout of gpt_jax (e.g. `git worktree add '
    '/tmp/before COMMIT`) whose train step is timed too, for before/after',
  )
  parser.add_argument('--json', help='write the results to this JSON file')
  args = parser.parse_args()
  reports = []
  for name in args.configs.split(','):
    reports.append(benchmark(name, args))
    _print(reports[-1])
  if args.json:
    Path(args.json).write_text(json.dumps(reports, indent=2))


if __name__ == '__main__':
  main()
