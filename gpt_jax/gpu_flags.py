"""XLA flags for NVIDIA GPUs, set before JAX starts its GPU backend.

XLA reads XLA_FLAGS once, when a backend starts, so they go into the environment before
anything touches a device. A user's own XLA_FLAGS win: a flag they name is left as they set
it, and GPT_JAX_GPU_FLAGS=0 leaves XLA_FLAGS alone altogether. Each default is one switch of
benchmarks/accelerator_throughput.py's A/B rows (`--flag_ab`), which measure what it is worth.
"""

import importlib.util
import os
from collections.abc import MutableMapping

# Name (what --flag_ab calls it) -> (XLA flag, our default, the other side of its A/B).
SWITCHES = {
  # Overlap collectives and copies with compute by scheduling for latency.
  'latency_hiding_scheduler': ('xla_gpu_enable_latency_hiding_scheduler', 'true', 'false'),
  # cuBLAS for plain matmuls instead of XLA's Triton GEMM autotuning: this model's matmuls
  # are large and dense, where cuBLAS is at home and Triton's autotuning costs compile time.
  'triton_gemm': ('xla_gpu_enable_triton_gemm', 'false', 'true'),
  # CUDA graphs of a step's kernels ('' turns them off): XLA's own default list is kept.
  'command_buffer': ('xla_gpu_enable_command_buffer', None, ''),
}


def _named(xla_flags: str) -> set[str]:
  return {flag.lstrip('-').split('=', 1)[0] for flag in xla_flags.split()}


def with_gpu_flags(xla_flags: str, flipped: tuple[str, ...] = ()) -> str:
  """`xla_flags` plus our defaults for every flag it does not name; the `flipped` switches
  (names of SWITCHES) take the other side of their A/B instead."""
  named = _named(xla_flags)
  added = []
  for name, (flag, default, other) in SWITCHES.items():
    value = other if name in flipped else default
    if flag not in named and value is not None:
      added.append(f'--{flag}={value}')
  return ' '.join([xla_flags, *added]).strip()


def has_cuda_plugin() -> bool:
  """Whether JAX's CUDA plugin is installed (`pip install "gpt_jax[gpu]"`), i.e. JAX will
  start a GPU backend when there is a GPU."""
  return any(
    importlib.util.find_spec(name) is not None
    for name in ('jax_cuda12_plugin', 'jax_cuda13_plugin')
  )


def set_gpu_flags(environ: MutableMapping[str, str] = os.environ) -> None:
  """Adds our GPU defaults to XLA_FLAGS where JAX's CUDA plugin is installed."""
  if environ.get('GPT_JAX_GPU_FLAGS', '1') == '0' or not has_cuda_plugin():
    return
  environ['XLA_FLAGS'] = with_gpu_flags(environ.get('XLA_FLAGS', ''))
