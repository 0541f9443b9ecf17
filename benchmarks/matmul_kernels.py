"""The training step's matmuls one by one: XLA's CPU dot against PyTorch's, float32.

A training step is mostly matmuls, so when one framework's step is faster on the
same cores, the first question is whether its matmul kernel is. For every matmul
shape of the paper config's step (batch 4 x 512 tokens, as benchmarks/throughput.py
runs it) — forward, input gradient and weight gradient of the qkv, MLP and tied
logits layers — this times one matmul in each of the three operand layouts a
step uses (NN: x @ w; TN: x^T @ g, a weight gradient; NT: g @ w^T, an input
gradient), each framework in its own process with all cores, best of 5.

    python benchmarks/matmul_kernels.py [--tokens 2048]

Prints GFLOP/s per shape and layout for XLA (jax.jit of the einsum; XLA picks its
library: YNNPACK, XNNPACK, Eigen or oneDNN per its flags) and PyTorch (torch.matmul:
oneDNN / MKL on x86), and their ratio.
"""

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host


def shapes(tokens: int, d: int = 768, d_ff: int = 3072, vocab: int = 40478):
  """(name, rows, contracted, columns): out[rows, columns] = a[rows, contracted] @ b[...]."""
  return [
    ('qkv forward', tokens, d, 3 * d),
    ('qkv weight grad', d, tokens, 3 * d),
    ('mlp in forward', tokens, d, d_ff),
    ('mlp in weight grad', d, tokens, d_ff),
    ('mlp out forward', tokens, d_ff, d),
    ('logits forward', tokens, d, vocab),
    ('logits input grad', tokens, vocab, d),
    ('logits weight grad', d, tokens, vocab),
    ('square 2048', 2048, 2048, 2048),
  ]


LAYOUTS = {'NN': 'mk,kn->mn', 'TN': 'km,kn->mn', 'NT': 'mk,nk->mn'}


def _best_seconds(run, repeats: int = 5) -> float:
  run()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def _operands(make, layout: str, rows: int, contracted: int, columns: int):
  a = make((contracted, rows) if layout == 'TN' else (rows, contracted))
  b = make((columns, contracted) if layout == 'NT' else (contracted, columns))
  return a, b


def jax_rates(tokens: int, conn) -> None:
  import jax
  import jax.numpy as jnp

  rates = {}
  for name, rows, contracted, columns in shapes(tokens):
    for layout, spec in LAYOUTS.items():
      a, b = _operands(
        lambda shape: jnp.ones(shape, jnp.float32), layout, rows, contracted, columns
      )
      matmul = jax.jit(lambda a, b, spec=spec: jnp.einsum(spec, a, b))
      seconds = _best_seconds(lambda m=matmul, a=a, b=b: m(a, b).block_until_ready())
      rates[name, layout] = 2 * rows * contracted * columns / seconds
  conn.send(rates)


def torch_rates(tokens: int, conn) -> None:
  import torch

  rates = {}
  for name, rows, contracted, columns in shapes(tokens):
    for layout in LAYOUTS:
      a, b = _operands(lambda shape: torch.ones(shape), layout, rows, contracted, columns)
      a = a.t() if layout == 'TN' else a  # a transposed view, as autograd passes it
      b = b.t() if layout == 'NT' else b
      seconds = _best_seconds(lambda a=a, b=b: torch.matmul(a, b))
      rates[name, layout] = 2 * rows * contracted * columns / seconds
  conn.send(rates)


def _measure(target, tokens: int) -> dict:
  """Runs `target` in a fresh process (its own thread pool) and returns its rates."""
  context = multiprocessing.get_context('spawn')
  parent, child = context.Pipe()
  process = context.Process(target=target, args=(tokens, child))
  process.start()
  rates = parent.recv()
  process.join()
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--tokens', type=int, default=2048, help='tokens per step (batch x length)')
  args = parser.parse_args()
  xla, torch = _measure(jax_rates, args.tokens), _measure(torch_rates, args.tokens)
  print(f'GFLOP/s, float32, {args.tokens} tokens: XLA / PyTorch (ratio) per operand layout')
  print(f'| matmul (rows x contracted x columns) | {" | ".join(LAYOUTS)} |')
  print('| --- |' + ' --- |' * len(LAYOUTS))
  for name, rows, contracted, columns in shapes(args.tokens):
    cells = [
      f'{xla[name, layout] / 1e9:.0f} / {torch[name, layout] / 1e9:.0f} '
      f'({xla[name, layout] / torch[name, layout]:.2f})'
      for layout in LAYOUTS
    ]
    print(f'| {name} ({rows} x {contracted} x {columns}) | {" | ".join(cells)} |')


if __name__ == '__main__':
  main()
