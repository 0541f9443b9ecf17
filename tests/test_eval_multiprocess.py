"""`gpt-jax eval` over 2 processes x 4 CPU devices gives the numbers of one process with 8."""

import json
import sys

import pytest
from helpers import random_lm_dir
from test_multiprocess import _free_port, _start_processes, _wait_for_success
from test_zero_shot import STORIES

from gpt_jax import cli


def test_two_process_eval_equals_one_process(tmp_path):
  model = random_lm_dir(tmp_path / 'model')
  text = tmp_path / 'text.jsonl'
  text.write_text(
    ''.join(json.dumps({'text': ' '.join(STORIES[i:] + STORIES[:i])}) + '\n' for i in range(6))
  )
  flags = ['eval', '--init', str(model), '--text', str(text), '--seq_len', '32']
  assert cli.main([*flags, '--out', str(tmp_path / 'one.json')]) == 0
  address = f'127.0.0.1:{_free_port()}'
  _wait_for_success(
    _start_processes(
      lambda i: [
        sys.executable,
        '-m',
        'gpt_jax.cli',
        *flags,
        '--out',
        str(tmp_path / 'two.json'),
        '--coordinator_address',
        address,
        '--num_processes',
        '2',
        '--process_id',
        str(i),
      ],
      2,
      tmp_path,
    )
  )
  one, two = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('one', 'two'))
  assert two['windows'] == one['windows'] > 8  # more than one batch of 8 windows
  assert two['loss'] == pytest.approx(one['loss'], rel=1e-6)
