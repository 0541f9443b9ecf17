"""The persistent compilation cache: on by default, set from the config, off with ''."""

import jax
import jax.numpy as jnp
import pytest
from helpers import prepared_local_corpus

from gpt_jax import cli, compile_cache
from gpt_jax import config as config_lib
from gpt_jax.errors import UserError


@pytest.fixture
def fresh_cache(monkeypatch):
  """No cache set by the environment; every compilation cached; JAX's settings put back after."""
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  before = (
    jax.config.jax_compilation_cache_dir,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  yield
  jax.config.update('jax_compilation_cache_dir', before[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', before[1])
  from jax.experimental.compilation_cache import compilation_cache

  compilation_cache.reset_cache()


def test_every_config_has_the_user_level_cache_on_by_default():
  for name in ('tiny', 'small', 'gpt1', 'gpt1_v5e_8', 'gpt_1p5b_v5e_64', 'finetune/sst2'):
    assert config_lib.load_config(name).compile_cache_dir == '~/.cache/gpt_jax/jax_cache'


def test_compilations_land_in_the_configured_directory_and_empty_turns_it_off(
  tmp_path, fresh_cache, monkeypatch
):
  config = config_lib.load_config('tiny', [f'compile_cache_dir={tmp_path / "cache"}'])
  assert compile_cache.enable(config) == str(tmp_path / 'cache')
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()
  assert any((tmp_path / 'cache').iterdir())

  config.compile_cache_dir = ''
  assert compile_cache.enable(config) is None
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.enable() == str(tmp_path / 'home/.cache/gpt_jax/jax_cache')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))  # JAX's own wins
  assert compile_cache.enable(config) == str(tmp_path / 'env')


def test_cli_pretrain_writes_its_compiled_steps_to_the_cache(tmp_path, fresh_cache, capsys):
  data = prepared_local_corpus(tmp_path)
  cache = tmp_path / 'jax_cache'
  code = cli.main(
    [
      'pretrain',
      '--config',
      'tiny',
      '--workdir',
      str(tmp_path / 'run'),
      *data,
      '--config.train.num_steps=2',
      '--config.train.batch_size=8',
      '--config.mesh.fsdp=1',
      '--config.mesh.data=-1',
      f'--config.compile_cache_dir={cache}',
    ]
  )
  assert code == 0, capsys.readouterr().err
  assert len(list(cache.iterdir())) >= 2  # at least the init and the train step


def test_an_unusable_cache_directory_is_a_one_line_error(tmp_path, fresh_cache):
  (tmp_path / 'file').write_text('')
  config = config_lib.load_config('tiny', [f'compile_cache_dir={tmp_path / "file" / "cache"}'])
  with pytest.raises(UserError, match='compile_cache_dir .* cannot be created'):
    compile_cache.enable(config)
