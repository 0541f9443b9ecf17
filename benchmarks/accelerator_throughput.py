"""Training-step throughput and MFU of the paper's 117M model on one accelerator, against PyTorch.

    python benchmarks/accelerator_throughput.py [--contenders a,b,...] [--flag_ab x,y,...]
    python benchmarks/accelerator_throughput.py --smoke        # tiny shapes, any CPU

A full training step (forward, backward, clipping, AdamW) of `configs/gpt1.py` (64 x 512,
bfloat16 compute, float32 parameters, vocabulary padded to 128 and a chunked LM loss) on the
first device. Each contender runs alone in a fresh process, one after the other:

  flash_dropout   model.attention='flash' with the paper's attention dropout 0.1
  flash           model.attention='flash', attn_pdrop=0
  cudnn           model.attention='dot_product_attention' (cuDNN's fused attention), attn_pdrop=0
  xla_dropout     model.attention='xla' with attention dropout 0.1
  torch_eager     GPT-1 in PyTorch (benchmarks/torch_gpt1.py: SDPA with dropout_p=0.1)
  torch_compile   the same under torch.compile

JAX contenders run with gpt_jax.gpu_flags' XLA flags (added to your own XLA_FLAGS). Each
switch named in --flag_ab adds a row: --ab_contender with that one flag on its other side;
each field in --step_ab one with that saving undone (pad_vocab_to=1, lm_chunk=0).
A contender that cannot run (a kernel missing, no GPU for torch) gets a row saying why.
Writes accelerator_throughput.json and .md (tokens/s, MFU against the device's data-sheet
peak, ratio to torch_compile) to --out.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput  # noqa: E402  (benchmarks/throughput.py: the JAX step builder, processes)

JAX_CONTENDERS = {
  'flash_dropout': {'attention': 'flash', 'attn_pdrop': 0.1},
  'flash': {'attention': 'flash', 'attn_pdrop': 0.0},
  'cudnn': {'attention': 'dot_product_attention', 'attn_pdrop': 0.0},
  'xla_dropout': {'attention': 'xla', 'attn_pdrop': 0.1},
}
TORCH_CONTENDERS = {'torch_eager': False, 'torch_compile': True}  # name -> torch.compile
CONTENDERS = (*JAX_CONTENDERS, *TORCH_CONTENDERS)
# --step_ab rows: --ab_contender with one of the step's savings undone.
STEP_SWITCHES = {'pad_vocab_to': 1, 'lm_chunk': 0}
SMOKE_MODEL = dict(vocab_size=500, n_ctx=64, n_embd=64, n_layer=2, n_head=2, d_ff=256)


def _jax_worker(spec, conn):
  os.environ['XLA_FLAGS'] = spec['xla_flags']  # before JAX starts a backend in this process
  import jax

  from gpt_jax import flops

  step, _ = throughput.make_jax_step(spec)
  start = time.perf_counter()
  jax.block_until_ready(step())
  if spec['smoke']:  # a rough CPU peak is enough to check the plumbing
    peak, source = flops.measure_matmul_peak(size=256), 'measured 256 x 256 matmul'
  else:
    peak, source = flops.peak_flops_per_device()
  device = jax.devices()[0]
  conn.send(
    {
      'compile_s': time.perf_counter() - start,
      'device': device.device_kind,
      'platform': device.platform,
      'peak_flops': peak,
      'peak_source': source,
      'jax_version': jax.__version__,
    }
  )
  metrics = throughput.serve_timed_steps(conn, step, jax.block_until_ready)
  stats = device.memory_stats() or {}
  conn.send({'loss': float(metrics['loss']), 'peak_gib': stats.get('peak_bytes_in_use', 0) / 2**30})


def _torch_step(spec):
  """step() runs one PyTorch training step of torch_gpt1.GPT1 and returns the loss."""
  import torch
  import torch_gpt1

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = torch_gpt1.GPT1(spec['model']).to(device).train()
  decay = [p for p in model.parameters() if p.ndim >= 2]  # decoupled decay on matrices only
  rest = [p for p in model.parameters() if p.ndim < 2]
  groups = [{'params': decay, 'weight_decay': 0.01}, {'params': rest, 'weight_decay': 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=2.5e-4, eps=1e-8, fused=device == 'cuda')
  vocab, shape = spec['model']['vocab_size'], (spec['batch'], spec['seq_len'] + 1)
  windows = torch.randint(0, vocab, shape, device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec['dtype'] == 'bfloat16')

  def forward_backward():
    with autocast:
      loss = model(windows[:, :-1], windows[:, 1:])
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

  return step, device


def _torch_worker(spec, conn):
  import torch

  step, device = _torch_step(spec)
  start = time.perf_counter()
  step().item()
  name = torch.cuda.get_device_name() if device == 'cuda' else 'cpu'
  conn.send({'compile_s': time.perf_counter() - start, 'device': name, 'platform': device})
  loss = throughput.serve_timed_steps(conn, step, lambda loss: loss.item())
  peak = torch.cuda.max_memory_allocated() if device == 'cuda' else 0
  conn.send({'loss': loss, 'peak_gib': peak / 2**30})


def _guarded(worker):
  """The worker, answering {'error': one line} instead of dying on an exception."""
  from gpt_jax.errors import UserError

  def run(spec, conn):
    try:
      worker(spec, conn)
    except Exception as error:  # noqa: BLE001  (any failure becomes the contender's row)
      if not isinstance(error, UserError):  # a UserError's one line says it all
        traceback.print_exc()
      conn.send({'error': f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'})

  return run


def _jax_guarded(spec, conn):
  _guarded(_jax_worker)(spec, conn)


def _torch_guarded(spec, conn):
  _guarded(_torch_worker)(spec, conn)


def _measure(target, spec, args) -> dict:
  """One fresh process: its first (compiling) step, then --rounds of --steps timed steps."""
  process, conn = throughput._start(target, spec)
  info = conn.recv()
  if 'error' not in info:
    seconds = []
    for _ in range(args.rounds):
      conn.send(args.steps)
      seconds.append(conn.recv() / args.steps)
    conn.send('stop')
    info.update(conn.recv(), step_s=statistics.median(seconds))
  process.join()
  return info


def _rows(args) -> tuple[dict, list[tuple[str, object, dict]]]:
  """The model's fields, and (row name, worker, spec) of every contender and A/B row asked for."""
  from gpt_jax import gpu_flags

  model = {**throughput._model_sizes('gpt1', None), 'pad_vocab_to': 128, 'lm_chunk': 128}
  if args.smoke:
    model.update(SMOKE_MODEL, lm_chunk=16)
  spec = dict(
    model=model, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype, smoke=args.smoke
  )
  user_flags = os.environ.get('XLA_FLAGS', '')
  rows = []

  def jax_row(name, contender, flipped=(), undone=None):
    flags = gpu_flags.with_gpu_flags(user_flags, flipped)
    overrides = {**model, **JAX_CONTENDERS[contender], **(undone or {})}
    rows.append((name, _jax_guarded, {**spec, 'model': overrides, 'xla_flags': flags}))

  for name in args.contenders:
    if name in JAX_CONTENDERS:
      jax_row(name, name)
    else:
      rows.append((name, _torch_guarded, {**spec, 'compile': TORCH_CONTENDERS[name]}))
  for switch in args.flag_ab:
    flag, default, other = gpu_flags.SWITCHES[switch]
    jax_row(f'{args.ab_contender} {flag}={other!r}', args.ab_contender, (switch,))
  for field in args.step_ab:
    value = STEP_SWITCHES[field]
    jax_row(f'{args.ab_contender} {field}={value}', args.ab_contender, undone={field: value})
  return model, rows


def _report(results: dict, args, model_fields: dict) -> dict:
  """The JSON report: setup, then one entry per row with tokens/s, MFU and x torch_compile."""
  from gpt_jax import flops
  from gpt_jax.model import ModelConfig

  jax_info = next((r for r in results.values() if 'peak_flops' in r), {})
  model = ModelConfig.from_config(model_fields)
  step_flops = flops.train_flops_per_token(model, args.seq_len) * args.batch * args.seq_len
  reference = results.get('torch_compile', {}).get('step_s')
  for result in results.values():
    if 'step_s' in result:
      result['tokens_per_s'] = args.batch * args.seq_len / result['step_s']
      if jax_info:
        result['mfu'] = step_flops / result['step_s'] / jax_info['peak_flops']
      if reference:
        result['x_torch_compile'] = reference / result['step_s']
  return {
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'commit': _commit(),
    'command': ' '.join([Path(sys.executable).name, *sys.argv]),
    'device': jax_info.get('device') or next(iter(results.values()), {}).get('device'),
    'jax_version': jax_info.get('jax_version'),
    'peak_flops': jax_info.get('peak_flops'),
    'peak_source': jax_info.get('peak_source'),
    'shape': {'batch': args.batch, 'seq_len': args.seq_len, 'dtype': args.dtype},
    'results': results,
  }


def _commit() -> str:
  result = subprocess.run(
    ['git', '-C', str(Path(__file__).parent), 'rev-parse', '--short', 'HEAD'],
    capture_output=True,
    text=True,
  )
  return result.stdout.strip() or 'unknown'


def markdown(report: dict) -> str:
  """The report as a Markdown table, its setup in a line above."""
  peak = report['peak_flops']
  lines = [
    f'{report["device"]}, jax {report["jax_version"]}, commit {report["commit"]}, '
    f'{report["date"]}; {report["shape"]["batch"]} x {report["shape"]["seq_len"]} tokens, '
    f'{report["shape"]["dtype"]}; MFU against {peak / 1e12 if peak else 0:.3g} TFLOP/s '
    f'({report["peak_source"]}).',
    f'Command: `{report["command"]}`',
    '',
    '| contender | ms/step | tokens/s | MFU | × torch.compile | peak GiB | first step s | loss |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in report['results'].items():
    if 'error' in r:
      lines.append(f'| {name} | did not run: {r["error"]} | | | | | | |')
      continue
    ratio = f'{r["x_torch_compile"]:.2f}×' if 'x_torch_compile' in r else '–'
    mfu = f'{r["mfu"]:.1%}' if 'mfu' in r else '–'
    lines.append(
      f'| {name} | {1e3 * r["step_s"]:.1f} | {r["tokens_per_s"]:,.0f} | {mfu} | {ratio} | '
      f'{r["peak_gib"]:.1f} | {r["compile_s"]:.1f} | {r["loss"]:.3f} |'
    )
  return '\n'.join(lines) + '\n'


def _names(choices):
  def parse(text: str) -> list[str]:
    names = [name for name in text.split(',') if name]
    unknown = [name for name in names if name not in choices]
    if unknown:
      raise argparse.ArgumentTypeError(f'unknown {unknown}; choose from {", ".join(choices)}')
    return names

  return parse


def parse_args(argv=None) -> argparse.Namespace:
  from gpt_jax import gpu_flags

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--contenders', type=_names(CONTENDERS), default=list(CONTENDERS))
  parser.add_argument(
    '--flag_ab', type=_names(tuple(gpu_flags.SWITCHES)), default=list(gpu_flags.SWITCHES)
  )
  parser.add_argument('--step_ab', type=_names(tuple(STEP_SWITCHES)), default=list(STEP_SWITCHES))
  parser.add_argument('--ab_contender', choices=tuple(JAX_CONTENDERS), default='flash_dropout')
  parser.add_argument('--batch', type=int, default=64, help="the paper's 64 x 512 by default")
  parser.add_argument('--seq_len', type=int, default=512)
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3, help='rounds; the median counts')
  parser.add_argument('--out', type=Path, default=Path('.'), help='folder for the JSON and table')
  parser.add_argument('--smoke', action='store_true', help='tiny shapes and steps, for a CPU')
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.seq_len, args.dtype, args.steps, args.rounds = 2, 32, 'float32', 1, 1
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  model, rows = _rows(args)
  results = {}
  for name, worker, spec in rows:
    results[name] = _measure(worker, spec, args)
    print(f'{name}: {results[name]}', flush=True)
  report = _report(results, args, model)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / 'accelerator_throughput.json').write_text(json.dumps(report, indent=2) + '\n')
  table = markdown(report)
  (args.out / 'accelerator_throughput.md').write_text(table)
  print('\n' + table)
  return report


if __name__ == '__main__':
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # contenders share the chip
  main()
