"""The GPU launch flags, and the accelerator benchmark's plumbing in its CPU --smoke mode."""

import json
import subprocess
import sys
from pathlib import Path

from gpt_jax import gpu_flags

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_flags_keep_what_the_user_set_and_flip_one_switch():
  user = '--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x'
  flags = gpu_flags.with_gpu_flags(user).split()
  assert flags[:2] == user.split()
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in flags
  assert not any(f.startswith('--xla_gpu_enable_triton_gemm=false') for f in flags)
  assert not any('command_buffer' in f for f in flags)  # XLA's own default stays
  flipped = gpu_flags.with_gpu_flags('', ('latency_hiding_scheduler', 'command_buffer')).split()
  assert sorted(flipped) == [
    '--xla_gpu_enable_command_buffer=',
    '--xla_gpu_enable_latency_hiding_scheduler=false',
    '--xla_gpu_enable_triton_gemm=false',
  ]


def test_smoke_run_writes_every_row_with_its_numbers(tmp_path):
  command = [
    *(sys.executable, str(ROOT / 'benchmarks' / 'accelerator_throughput.py'), '--smoke'),
    *('--contenders', 'xla_dropout', '--flag_ab', 'triton_gemm', '--step_ab', ''),
    *('--ab_contender', 'xla_dropout'),
    *('--out', str(tmp_path)),
  ]
  subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=300)
  report = json.loads((tmp_path / 'accelerator_throughput.json').read_text())
  rows = report['results']
  assert list(rows) == ['xla_dropout', "xla_dropout xla_gpu_enable_triton_gemm='true'"]
  for row in rows.values():
    assert row['tokens_per_s'] > 0 and 0 < row['mfu'] and row['loss'] > 0, row
  assert report['shape'] == {'batch': 2, 'seq_len': 32, 'dtype': 'float32'}
  table = (tmp_path / 'accelerator_throughput.md').read_text()
  assert all(f'| {name} |' in table for name in rows)
