"""finetune.n_transfer: which pretrained layers a fine-tuning run starts from (OpenAI's meaning)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from gpt_jax import config as config_lib
from gpt_jax import finetune, layer_layout, weights
from gpt_jax.errors import UserError


@pytest.fixture(scope='module')
def setup(tmp_path_factory, random_lm):
  """A two-block Hugging Face directory and a small local task to fine-tune it on."""
  root = tmp_path_factory.mktemp('transfer')
  model = random_lm
  task = root / 'task.jsonl'
  task.write_text(
    ''.join(json.dumps({'text': f'call {i}', 'label': 'ab'[i % 2]}) + '\n' for i in range(8))
  )
  return model, [
    f'finetune.init={model}',
    f'task.train={task}',
    f'task.validation={task}',
    'train.batch_size=8',
    'mesh.fsdp=1',
    'mesh.data=-1',
    'train.seed=5',
  ]


def _config(overrides, *more):
  return config_lib.load_config('finetune/local', [*overrides, *more])


def _unrolled(state) -> dict:
  return jax.device_get(layer_layout.convert(state.params['transformer'], False))


def _initial_state(run, config):
  """Fine-tuning's fresh state for `run` with the finetune section of `config`."""
  view = finetune.FinetuneConfig.from_config(config.finetune)
  return finetune._initial_state(dataclasses.replace(run, finetune_config=view))


def test_blocks_not_transferred_are_a_fresh_models_draws(setup):
  """Through fine-tuning's own set-up with stacked blocks; the unrolled layout through the
  same merge, checked against it."""
  _, overrides = setup
  overrides = [*overrides, 'model.scan_layers=True']
  run = finetune._set_up(_config(overrides))
  fresh_state = _initial_state(run, _config(overrides, 'finetune.random_init=True'))
  fresh = _unrolled(fresh_state)
  pretrained = jax.device_get(layer_layout.convert(run.weights.params, False))
  kernel = ('attn', 'c_attn', 'kernel')
  assert not np.array_equal(_at(fresh['h_1'], kernel), _at(pretrained['h_1'], kernel))
  for count in (-1, 0, 1, 2):
    config = _config(overrides, f'finetune.n_transfer={count}')
    state = _unrolled(_initial_state(run, config))
    for name in state:
      block = int(name[2:]) if name.startswith('h_') else -1  # embeddings: before block 0
      expected = pretrained if block < count else fresh
      jax.tree.map(np.testing.assert_array_equal, state[name], expected[name])
    unrolled = weights.transferred(pretrained, fresh, count)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(unrolled), state)


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize(
  'more, message',
  [
    (
      ['finetune.n_transfer=3'],
      "finetune.n_transfer='3': use -1 (nothing), 0 (the embeddings), 1 to 2",
    ),
    (['finetune.n_transfer=-2'], "finetune.n_transfer='-2': use -1"),
    (['finetune.n_transfer=top'], "finetune.n_transfer='top': use -1"),
    (
      ['finetune.random_init=True', 'finetune.n_transfer=1'],
      'finetune.random_init=True transfers nothing',
    ),
  ],
)
def test_n_transfer_outside_its_range_is_one_line(setup, more, message):
  with pytest.raises(UserError) as error:
    finetune.load_init(_config(setup[1], *more))
  assert str(error.value).startswith(message) and '\n' not in str(error.value)
