"""Ahead-of-time compilation for TPU topologies (libtpu, no TPU) and the sharding guard.

Expected sizes come from the architecture by hand (parameter counts per layer,
which parameters carry an 'embed' axis), not from the code under test.
"""

import re

import jax.numpy as jnp
import pytest
from helpers import make_trainer, needs_libtpu, tiny_config

from gpt_jax import cli, dryrun, optim, sharding, train
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig


def _parameter_counts(config):
  """(all parameters, those without an embedding axis) of the GPT-1 layout, by hand."""
  m = config.model
  d, ff, layers = m.n_embd, m.d_ff, m.n_layer
  per_layer = (
    d * 3 * d
    + 3 * d  # c_attn: fused q, k, v
    + d * d
    + d  # attn c_proj
    + d * ff
    + ff
    + ff * d
    + d  # mlp c_fc, c_proj
    + 4 * d
  )  # ln_1, ln_2
  total = m.vocab_size * d + m.n_ctx * d + layers * per_layer
  no_embed_axis = layers * (3 * d + ff)  # the c_attn and c_fc biases
  return total, no_embed_axis


def _cli_dry_run(monkeypatch, topology, config):
  """`gpt-jax pretrain --config tiny --dry_run ...` set to `config`; returns (exit code, report)."""
  reports = []
  real_dry_run = dryrun.dry_run
  monkeypatch.setattr(
    dryrun, 'dry_run', lambda *args: reports.append(real_dry_run(*args)) or reports[-1]
  )
  overrides = [
    f'--config.{section}.{key}={value}'
    for section in ('model', 'train', 'mesh')
    for key, value in config[section].items()
  ]
  code = cli.main(['pretrain', '--config', 'tiny', '--dry_run', '--topology', topology, *overrides])
  return code, reports[0]


@needs_libtpu
def test_small_config_compiles_for_v5e_2x2_and_fits(monkeypatch, capsys):
  config = tiny_config()  # tiny.py's mesh, fsdp=-1: the 4 chips shard every embedding axis
  code, report = _cli_dry_run(monkeypatch, 'v5e:2x2', config)

  assert code == 0
  assert (report.num_chips, report.device_kind) == (4, 'TPU v5 lite')
  assert report.mesh_shape == {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert report.hbm_bytes == 16 * 2**30
  total, replicated = _parameter_counts(config)
  assert report.param_bytes == 4 * ((total - replicated) // 4 + replicated)
  # Adam's two moments per parameter, plus its step counter.
  assert 2 * report.param_bytes <= report.opt_state_bytes <= 2 * report.param_bytes + 64
  assert report.batch_bytes == 8 * 17 * 4 // 4
  # The compiled step holds at least the state it updates in place.
  assert report.param_bytes + report.opt_state_bytes < report.peak_bytes < report.hbm_bytes
  assert report.fits
  # XLA counts every matmul the model counts, plus elementwise work, on each chip.
  assert report.model_flops <= report.xla_flops <= 3 * report.model_flops
  printed = capsys.readouterr().out
  assert 'v5e:2x2: 4 x TPU v5 lite' in printed and re.search(r'fits: peak \d', printed)


@needs_libtpu
def test_remat_policies_trade_activation_memory_for_recomputed_flops():
  config = tiny_config(n_layer=4, scan_layers=True)
  config.train.update(batch_size=32, seq_len=32)
  reports = dryrun.remat_reports(config, 'v5e:2x2', ['none', 'save_qkv_mlp', 'full'])
  none, named, full = reports['none'], reports['save_qkv_mlp'], reports['full']
  assert full.peak_bytes < none.peak_bytes  # fewer saved activations ...
  assert none.xla_flops < named.xla_flops < full.xla_flops  # ... more forward work redone
  table = dryrun.remat_table(config, 'v5e:2x2', reports)
  rows = [line for line in table.splitlines()[3:] if line.startswith('| ')]  # after the headers
  assert [row.split(' | ')[0] for row in rows] == ['| none', '| save_qkv_mlp', '| full']
  assert 'scan_layers=True' in table


@needs_libtpu
def test_a_model_too_big_for_the_chip_is_reported_as_not_fitting(monkeypatch, capsys):
  # A 4M x 1024 float32 embedding (16 GiB) with its Adam moments, replicated on
  # every chip of a data-parallel mesh.
  config = tiny_config(vocab_size=4 * 2**20, n_embd=1024, n_head=4, n_layer=1, d_ff=64, n_ctx=8)
  config.train.update(batch_size=4, seq_len=8)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  code, report = _cli_dry_run(monkeypatch, 'v5e:2x2', config)

  assert code == 1
  total, _ = _parameter_counts(config)
  assert report.param_bytes == 4 * total
  assert not report.fits
  # XLA refuses to compile it, saying so; the table shows what we know without it.
  assert 'exceeds available HBM' in report.out_of_memory and report.peak_bytes is None
  captured = capsys.readouterr()
  assert re.search(r'DOES NOT FIT: .*Ran out of memory', captured.out)
  assert 'does not fit on v5e:2x2' in captured.err


@needs_libtpu
def test_v4_presents_each_chip_as_one_megacore_device():
  devices, generation = dryrun.topology_devices('v4:2x2x1')  # a v4-8: 4 chips, 8 cores
  assert len(devices) == 4 and devices[0].device_kind == 'TPU v4'
  assert generation.hbm_bytes == 32 * 2**30


@pytest.mark.parametrize('name', ['v9z:2x2', 'v5e-8', 'v5e', 'v4:2'])
def test_unknown_topology_names_fail_listing_the_known_ones(name):
  with pytest.raises(UserError, match=r'unknown TPU topology .*v4, v5e, v5p, v6e.*v5e:2x4'):
    dryrun.topology_devices(name)


@needs_libtpu
def test_topology_libtpu_cannot_build_fails_clearly():
  with pytest.raises(UserError, match=r"libtpu rejected TPU topology 'v5e:3x3'.*v5e:2x4"):
    dryrun.topology_devices('v5e:3x3')


def _mesh(data, fsdp, tensor):
  return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_sharding_guard_measures_the_replicated_fraction():
  # Tensor parallelism alone keeps everything with only an embedding axis whole on
  # every device: position embeddings, LayerNorms, the two output-projection biases.
  config = tiny_config()
  m = config.model
  total, _ = _parameter_counts(config)
  fraction = (m.n_ctx * m.n_embd + m.n_layer * (4 + 2) * m.n_embd) / total
  model = GPT(ModelConfig.from_config(m))
  tx, schedule = optim.make_optimizer(config.optim, 10)

  def trainer(max_fraction):
    return train.Trainer(
      init_params=lambda rng: model.init(rng, jnp.zeros((1, 16), jnp.int32))['params'],
      loss_fn=train.lm_loss_fn(model),
      tx=tx,
      schedule=schedule,
      mesh=_mesh(2, 1, 4),
      max_replicated_fraction=max_fraction,
    )

  trainer(fraction * 1.001)
  with pytest.raises(
    sharding.ShardingError,
    match=rf'{fraction:.0%} of the parameter bytes .*biggest: '
    r'positions_embed/embedding \(4.0 KiB\)',
  ):
    trainer(fraction * 0.999)


def test_sharding_guard_names_parameters_that_lost_their_sharding(monkeypatch):
  # As if every kernel and embedding had lost its logical names: nothing maps to fsdp.
  rules = tuple((name, None if name == 'embed' else axes) for name, axes in sharding.LOGICAL_RULES)
  monkeypatch.setattr(sharding, 'LOGICAL_RULES', rules)
  config = tiny_config()
  with pytest.raises(
    sharding.ShardingError,
    match=r'100% of the parameter bytes would be replicated on every device of '
    r"mesh \{'data': 1, 'fsdp': 8, 'tensor': 1\}.*biggest: "
    r'h_0/attn/c_attn/kernel \(12.0 KiB\)',
  ):
    make_trainer(config, _mesh(1, 8, 1))
  make_trainer(config, _mesh(8, 1, 1))  # pure data parallelism replicates on purpose


def test_without_libtpu_the_cli_says_how_to_get_it(monkeypatch, capsys):
  monkeypatch.setattr(dryrun, 'libtpu_installed', lambda: False)
  assert cli.main(['pretrain', '--config', 'tiny', '--dry_run', '--topology', 'v5e:2x4']) == 1
  assert 'pip install "gpt_jax[tpu]"' in capsys.readouterr().err


def test_cli_dry_run_needs_a_topology(capsys):
  assert cli.main(['pretrain', '--config', 'tiny', '--dry_run']) == 1
  assert 'needs --dry_run, --topology and --config' in capsys.readouterr().err
