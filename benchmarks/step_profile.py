"""Where one training step spends its time: gpt_jax and PyTorch side by side, per kind of op.

Profiles a few training steps of each framework (the same steps that
benchmarks/throughput.py times: forward, backward, clipping, AdamW, float32)
and sorts every op into the same groups: the matmuls by role (qkv, attention
scores, probabilities x values, attention projection, MLP in / out, logits;
a Linear's bias add counts with its matmul) and softmax (with scaling and
mask), dropout, LayerNorm, GELU, residual adds, embeddings, cross-entropy,
the optimizer (clipping + AdamW), copies/transposes. Forward and backward
count together.

gpt_jax: a jax.profiler trace, read with jax.profiler.ProfileData; each XLA
op (a fusion, a dot, a copy) is named back to the JAX code it came from
through the op_name metadata of the compiled HLO; a fusion that holds a dot
is a matmul, whatever else XLA fused into it. PyTorch (eager, Hugging Face's
OpenAIGPTLMHeadModel): torch.profiler, with each module's forward marked by a
record_function range; a backward node belongs to the group of the forward
op with its sequence number.

    python benchmarks/step_profile.py --configs small,gpt1 [--steps 3]

Prints ms per group per framework: the median over the profiled steps of the
time ops of that group ran (XLA may run two small ops at once on two cores,
so gpt_jax's sum can exceed its wall time).
"""

import argparse
import collections
import glob
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/ is not a package)

GROUPS = (
  'qkv matmul',
  'scores matmul',
  'probs x values matmul',
  'attn proj matmul',
  'mlp in matmul',
  'mlp out matmul',
  'logits matmul',
  'softmax (scale, mask)',
  'dropout',
  'layernorm',
  'gelu',
  'residual adds',
  'embeddings',
  'cross-entropy',
  'optimizer (clip + adamw)',
  'copies/transposes',
  'other',
)

# gpt_jax: JAX op_name paths (model.py's module names) -> group. First match wins.
_LINEAR_ROLES = (
  ('/c_attn/', 'qkv matmul'),
  ('/attn/c_proj/', 'attn proj matmul'),
  ('/c_fc/', 'mlp in matmul'),
  ('/mlp/c_proj/', 'mlp out matmul'),
  ('tokens_embed.attend', 'logits matmul'),
  ('bqhd,bkhd->bhqk', 'scores matmul'),
  ('/scores/', 'scores matmul'),
  ('bhqk,bkhd->bqhd', 'probs x values matmul'),
  ('/values/', 'probs x values matmul'),
)
_JAX_ELEMENTWISE = (
  ('Dropout', 'dropout'),
  ('/ln_', 'layernorm'),
  ('/mlp/', 'gelu'),
  ('/attn/', 'softmax (scale, mask)'),
  (r'/h_\d+/add', 'residual adds'),
  ('_embed', 'embeddings'),
  ('GPT.hidden_states/add', 'embeddings'),
)


def _jax_group(op_name: str, instruction: str, is_dot: bool) -> str:
  if is_dot or not instruction.startswith(('copy', 'transpose')):
    for pattern, group in _LINEAR_ROLES:
      if pattern in op_name:
        return group
  if instruction.startswith(('copy', 'transpose')):
    return 'copies/transposes'
  for pattern, group in _JAX_ELEMENTWISE:
    if re.search(pattern, op_name):
      return group
  if 'jvp()' in op_name:  # the loss function, outside the model
    return 'cross-entropy'
  return 'optimizer (clip + adamw)' if op_name else 'other'


def hlo_groups(hlo_text: str) -> dict[str, str]:
  """Group of every instruction of a compiled HLO module, by instruction name."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY )?%(\S+) ', line)
    if header and line.rstrip().endswith('{'):
      current = computations.setdefault(header[1], [])
    elif current is not None and (m := re.match(r'\s*(?:ROOT )?%(\S+) = \S+ (\S+?)\(', line)):
      op_name = re.search(r'op_name="([^"]*)"', line)
      called = re.search(r'calls=%([^,\s]+)', line)
      current.append((m[1], m[2], op_name[1] if op_name else '', called[1] if called else None))

  def dot_op_name(computation):
    for _, opcode, op_name, called in computations.get(computation, ()):
      if opcode in ('dot', 'convolution'):
        return op_name
      if called and (inner := dot_op_name(called)):
        return inner
    return None

  groups = {}
  for instructions in computations.values():
    for name, opcode, op_name, called in instructions:
      dot = op_name if opcode == 'dot' else dot_op_name(called) if called else None
      groups[name] = _jax_group(dot or op_name, name, dot is not None)
  return groups


def profile_jax(spec: dict, steps: int) -> dict:
  """{group: [ms per profiled step]} and the median step wall time of gpt_jax."""
  import jax
  from jax.profiler import ProfileData

  step, trainer = throughput.make_jax_step(spec)
  jax.block_until_ready(step())
  batch = jax.ShapeDtypeStruct((spec['batch'], spec['seq_len'] + 1), 'int32')
  groups = hlo_groups(trainer.lower_train_step(batch).compile().as_text())
  walls = []
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(step())
      walls.append(time.perf_counter() - start)
    jax.profiler.stop_trace()
    trace = ProfileData.from_file(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
  per_run = collections.defaultdict(collections.Counter)
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get('hlo_module') == 'jit__train_step' and 'hlo_op' in stats:
          group = groups.get(stats['hlo_op'], 'other')
          per_run[stats['run_id']][group] += event.duration_ns / 1e6
  return _per_step(list(per_run.values())), statistics.median(walls) * 1e3


def _per_step(step_totals: list[collections.Counter]) -> dict:
  return {group: [totals[group] for totals in step_totals] for group in GROUPS}


# PyTorch: Hugging Face module names -> group of the ops they run.
_TORCH_MODULES = (
  ('.attn.c_attn', 'qkv matmul'),
  ('.attn.c_proj', 'attn proj matmul'),
  ('.mlp.c_fc', 'mlp in matmul'),
  ('.mlp.c_proj', 'mlp out matmul'),
  ('lm_head', 'logits matmul'),
  ('dropout', 'dropout'),
  ('drop', 'dropout'),
  ('.ln_', 'layernorm'),
  ('.mlp.act', 'gelu'),
  ('_embed', 'embeddings'),
  ('.attn', 'attention'),
  (r'^transformer\.h\.\d+$', 'residual adds'),
)
_TORCH_OPS = (
  ('cross_entropy', 'cross-entropy'),
  ('log_softmax', 'cross-entropy'),
  ('nll_loss', 'cross-entropy'),
  ('permute', 'copies/transposes'),
  ('contiguous', 'copies/transposes'),
  ('clone', 'copies/transposes'),
  ('copy', 'copies/transposes'),
  ('Optimizer', 'optimizer (clip + adamw)'),
  ('foreach', 'optimizer (clip + adamw)'),
  ('clip', 'optimizer (clip + adamw)'),
)


def _torch_forward_group(region: str | None, event) -> str:
  """Group of a forward op that ran inside the module `region` (None: outside every module)."""
  if region == 'attention':  # what Attention runs itself, between its Conv1D layers
    if 'matmul' in event.name or 'bmm' in event.name:
      probs = event.input_shapes[0]
      return 'probs x values matmul' if probs[-1] == probs[-2] else 'scores matmul'
    if any(op in event.name for op in ('permute', 'contiguous', 'clone', 'view', 'split')):
      return 'copies/transposes'
    return 'softmax (scale, mask)'
  if region:
    return region
  return next((group for op, group in _TORCH_OPS if op in event.name), 'other')


def _label_modules(model, torch):
  """Marks each labelled module's forward with a record_function range named 'module:GROUP'."""

  def label(name):
    return next((group for pattern, group in _TORCH_MODULES if re.search(pattern, name)), None)

  def enter(group, ranges):
    ranges.append(torch.profiler.record_function(f'module:{group}'))
    ranges[-1].__enter__()

  for name, module in model.named_modules():
    if group := label(name):
      ranges = []  # a stack: a module may run inside another call of itself
      # Hooks must return None, or they replace the module's inputs / outputs.
      module.register_forward_pre_hook(lambda *_, g=group, r=ranges: enter(g, r))
      module.register_forward_hook(lambda *_, r=ranges: r.pop().__exit__(None, None, None))


def _torch_step_groups(events) -> collections.Counter:
  """ms per group of one profiled PyTorch step, from the top-level events of its profile."""
  by_sequence, totals = {}, collections.Counter()

  def forward(event, region):
    if event.name.startswith('module:'):
      for child in event.cpu_children:
        forward(child, event.name[len('module:') :])
      return
    group = _torch_forward_group(region, event)
    totals[group] += event.cpu_time_total / 1e3
    stack = [event]
    while stack:  # the whole subtree's backward nodes go to this group
      node = stack.pop()
      by_sequence.setdefault(node.sequence_nr, group)
      stack.extend(node.cpu_children)

  roots = [e for e in events if e.cpu_parent is None]
  for event in roots:
    if not event.name.startswith('autograd::engine'):
      forward(event, None)
  for event in roots:
    if event.name.startswith('autograd::engine'):
      group = by_sequence.get(event.sequence_nr, 'other')
      totals[group] += event.cpu_time_total / 1e3
  return totals


def profile_torch(spec: dict, steps: int) -> dict:
  """{group: [ms per profiled step]} and the median step wall time of PyTorch eager."""
  import torch

  step, model = throughput.make_torch_step({**spec, 'compile': False})
  _label_modules(model, torch)
  step().item()
  step_totals, walls = [], []
  for _ in range(steps):
    with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as profile:
      start = time.perf_counter()
      step().item()
      walls.append(time.perf_counter() - start)
    step_totals.append(_torch_step_groups(profile.events()))
  return _per_step(step_totals), statistics.median(walls) * 1e3


def _worker(framework, spec, steps, conn):
  profile = profile_jax if framework == 'gpt_jax' else profile_torch
  conn.send(profile(spec, steps))


def run(config_name: str, steps: int) -> dict:
  """{framework: ({group: median ms}, profiled wall ms)} for one config, each in its own process."""
  batch, seq_len = throughput.SHAPES[config_name]
  spec = dict(
    model=throughput._model_sizes(config_name, None), batch=batch, seq_len=seq_len, dtype='float32'
  )
  results = {}
  for framework in ('gpt_jax', 'torch'):
    context = multiprocessing.get_context('spawn')
    parent, child = context.Pipe()
    process = context.Process(target=_worker, args=(framework, spec, steps, child))
    process.start()
    child.close()  # so that recv() fails, rather than waits, if the worker dies
    per_group, wall_ms = parent.recv()
    process.join()
    results[framework] = ({g: statistics.median(ms) for g, ms in per_group.items()}, wall_ms)
  return results


def print_table(config_name: str, results: dict) -> None:
  (ours, our_wall), (theirs, their_wall) = results['gpt_jax'], results['torch']
  batch, seq_len = throughput.SHAPES[config_name]
  print(f'\n{config_name} ({batch} x {seq_len}), ms per step (median of profiled steps)')
  print('| group | gpt_jax | PyTorch eager | gpt_jax - PyTorch |\n| --- | ---: | ---: | ---: |')
  for group in GROUPS:
    print(
      f'| {group} | {ours[group]:.1f} | {theirs[group]:.1f} | {ours[group] - theirs[group]:+.1f} |'
    )
  total, their_total = sum(ours.values()), sum(theirs.values())
  print(f'| sum of ops | {total:.1f} | {their_total:.1f} | {total - their_total:+.1f} |')
  print(
    f'| step wall time (profiled) | {our_wall:.1f} | {their_wall:.1f} | '
    f'{our_wall - their_wall:+.1f} |'
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--configs', default='small,gpt1', help='comma-separated: tiny, small, gpt1')
  parser.add_argument('--steps', type=int, default=3, help='profiled steps per framework')
  args = parser.parse_args()
  for name in args.configs.split(','):
    print_table(name, run(name, args.steps))


if __name__ == '__main__':
  main()
