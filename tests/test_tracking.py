"""Weights & Biases, offline: a fine-tuning run logs its config once and every logged step's
metrics, the same numbers as metrics.jsonl; only process 0 opens a run."""

import glob
import json
import struct

import pytest
from helpers import random_lm_dir
from test_finetune import _task_files

from gpt_jax import cli, tracking
from gpt_jax.config import load_config
from gpt_jax.report import read_metrics


def read_wandb_records(path) -> list:
  """The protobuf records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks of
  chunks with a 7-byte header, after a 7-byte file header)."""
  from wandb.proto import wandb_internal_pb2

  data, block = open(path, 'rb').read(), 32768
  position, pending, records = 7, b'', []
  while position + 7 <= len(data):
    room = block - position % block
    _, length, kind = struct.unpack('<IHB', data[position : position + 7])
    if room < 7 or (length == 0 and kind == 0):  # block trailer / padding
      position += room
      continue
    pending += data[position + 7 : position + 7 + length]
    position += 7 + length
    if kind in (1, 4):  # a full record, or the last chunk of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b''
  return records


def test_finetuning_logs_config_once_and_every_logged_step_offline(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  model = random_lm_dir(tmp_path / 'model', scale=1.0)
  workdir = tmp_path / 'ft'
  assert (
    cli.main(
      [
        'finetune',
        '--config',
        'configs/finetune/local.py',
        '--workdir',
        str(workdir),
        '--init',
        str(model),
        *_task_files(tmp_path),
        '--config.task.max_len=32',
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_steps=6',
        '--config.train.log_every=2',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
        '--config.report.wandb_project=gpt_jax_test',
      ]
    )
    == 0
  )
  [run_file] = glob.glob(str(workdir / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
  records = read_wandb_records(run_file)

  configs = [r.run.config for r in records if r.WhichOneof('record_type') == 'run']
  assert len(configs) == 1 and not [r for r in records if r.WhichOneof('record_type') == 'config']
  logged = {item.key: json.loads(item.value_json) for item in configs[0].update}
  assert logged['optim']['learning_rate'] == 6.25e-5 and logged['train']['num_steps'] == 6
  assert logged['task']['name'] == 'local' and logged['report']['wandb_project'] == 'gpt_jax_test'

  history = {}
  for record in records:
    if record.WhichOneof('record_type') == 'history':
      items = {
        item.key or '/'.join(item.nested_key): json.loads(item.value_json)
        for item in record.history.item
      }
      history.setdefault(items.pop('_step'), {}).update(items)
  expected = {}
  for row in read_metrics(workdir / 'metrics.jsonl'):
    expected.setdefault(row['step'], {}).update(
      {
        f'{row["split"]}/{name}': value
        for name, value in row.items()
        if name not in ('split', 'step', 'time')
      }
    )
  assert sorted(history) == sorted(expected) == [2, 4, 6]
  for step, values in expected.items():
    assert {k: history[step][k] for k in values} == pytest.approx(values)


def test_only_process_zero_and_only_when_asked_opens_a_run(tmp_path, monkeypatch):
  config = load_config('finetune/local', ['report.wandb_project=p'])
  monkeypatch.setattr('jax.process_index', lambda: 1)
  assert tracking.trackers(config, tmp_path) == []
  monkeypatch.setattr('jax.process_index', lambda: 0)
  assert tracking.trackers(load_config('finetune/local', []), tmp_path) == []
