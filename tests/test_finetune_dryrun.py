"""`gpt-jax finetune --dry_run`: the fine-tuning step compiled for a TPU slice (libtpu, no TPU).

The task's shape comes from the registry (RACE: four choices) without its
data; expected sizes are worked out by hand.
"""

import re

from helpers import needs_libtpu

from gpt_jax import cli, dryrun

MODEL = {'vocab_size': 4096, 'n_ctx': 128, 'n_embd': 32, 'n_head': 2, 'n_layer': 1, 'd_ff': 64}


def _dry_run(monkeypatch, lm_chunk):
  reports = []
  real = dryrun.finetune_dry_run
  monkeypatch.setattr(
    dryrun, 'finetune_dry_run', lambda *args: reports.append(real(*args)) or reports[-1]
  )
  code = cli.main(
    [
      'finetune',
      '--config',
      'finetune/race_middle',
      '--dry_run',
      '--topology',
      'v5e:2x2',
      *[f'--config.model.{k}={v}' for k, v in MODEL.items()],
      '--config.train.batch_size=8',
      '--config.mesh.fsdp=1',
      '--config.mesh.data=-1',
      f'--config.finetune.lm_chunk={lm_chunk}',
    ]
  )
  return code, reports[0]


@needs_libtpu
def test_race_recipe_compiles_and_chunked_lm_logits_need_less_memory(monkeypatch, capsys):
  code, chunked = _dry_run(monkeypatch, lm_chunk=16)
  assert code == 0 and chunked.fits
  assert chunked.mesh_shape == {'data': 4, 'fsdp': 1, 'tensor': 1}
  # Per chip: 2 of the 8 examples, 4 choices x 128 tokens each for tokens and lm_mask (int32),
  # 4 extract indices, and label, valid, position.
  assert chunked.batch_bytes == 2 * (2 * 4 * 128 * 4 + 4 * 4 + 3 * 4)
  d, ff, vocab = MODEL['n_embd'], MODEL['d_ff'], MODEL['vocab_size']
  params = (
    vocab * d + 128 * d + d * 3 * d + 3 * d + d * d + d + d * ff + ff + ff * d + d + 4 * d + d + 1
  )  # decoder, then the one-output choice head
  assert chunked.param_bytes == 4 * params
  printed = capsys.readouterr().out
  assert re.search(r'fits: peak \d', printed)

  # All 128 positions' logits at once (lm_chunk=0, plain autodiff) are 2 x 4 x 128 x 4096
  # float32 = 16 MiB per chip; chunks of 16 positions lower XLA's peak by a good part of that.
  _, whole = _dry_run(monkeypatch, lm_chunk=0)
  assert whole.peak_bytes - chunked.peak_bytes > 4 * 2**20
