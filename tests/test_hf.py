"""Weight import/export: Hugging Face directories and OpenAI's original release format.

References are Hugging Face models (random weights, no download); the release
format is written here from arrays that also go into a Hugging Face model by
an explicit, independent name list.
"""

import dataclasses
import json
import shutil

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from test_model_reference import SMALL, hf_logits, max_abs_diff, our_logits, random_hf_model

from gpt_jax import hf
from gpt_jax.data.tokenizer import train_tokenizer
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig, add_token_rows

TOKENS = np.random.default_rng(0).integers(0, SMALL['vocab_size'], (2, 12))


def _small_model_config() -> ModelConfig:
  return ModelConfig(
    vocab_size=SMALL['vocab_size'],
    n_ctx=SMALL['n_positions'],
    n_embd=SMALL['n_embd'],
    n_layer=SMALL['n_layer'],
    n_head=SMALL['n_head'],
    d_ff=4 * SMALL['n_embd'],
  )


def _random_params(model_config: ModelConfig, seed: int = 0):
  """Our params with every leaf random (biases and LayerNorms too), as numpy float32."""
  shapes = jax.eval_shape(
    lambda: GPT(model_config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  )
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), flax.linen.meta.unbox(shapes)
  )


def _save_hf_dir(model, path, *, bare_keys=False, safetensors=True, config_changes=None):
  """A directory like a Hub download: config.json plus one weights file."""
  path.mkdir()
  config = model.config.to_dict()
  config.update(config_changes or {})
  (path / 'config.json').write_text(json.dumps(config))
  state = (model.transformer if bare_keys else model).state_dict()
  if safetensors:
    from safetensors.torch import save_file

    save_file(
      {k: v.contiguous() for k, v in state.items() if k != 'lm_head.weight'},
      path / 'model.safetensors',
    )
  else:
    torch.save(state, path / 'pytorch_model.bin')
  return path


# ------------------------------------------------------------- Hugging Face


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  text = ' '.join(f'the {w} sat on the mat' for w in ('cat', 'dog', 'fox') * 40)
  return train_tokenizer(
    [text], tmp_path_factory.mktemp('spm') / 'spm.model', vocab_size=300, max_bytes=10**6
  )


def test_export_loads_in_hugging_face_without_warnings_and_gives_same_logits(tmp_path, tokenizer):
  model_config = _small_model_config()
  params = _random_params(model_config)
  out = hf.export_hf_dir(params, model_config, tmp_path / 'export', tokenizer)

  reference, info = transformers.OpenAIGPTLMHeadModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched weights, no errors
  reference.eval()
  diff = max_abs_diff(our_logits(params, model_config, TOKENS), hf_logits(reference, TOKENS))
  print(f'export round trip max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5
  assert (out / 'tokenizer.model').read_bytes() == tokenizer.model_path.read_bytes()
  assert (out / 'tokenizer.json').is_file() and (out / 'tokenizer_config.json').is_file()
  assert [p.name for p in tmp_path.iterdir()] == ['export']  # no temp left


def test_import_of_an_in_memory_model_gives_same_logits():
  reference = random_hf_model(seed=2, std=0.1, **SMALL)
  params, model_config = hf.params_from_hf(reference)
  diff = max_abs_diff(our_logits(params, model_config, TOKENS), hf_logits(reference, TOKENS))
  print(f'import max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5


@pytest.mark.parametrize('bare_keys, safetensors', [(False, True), (True, False)])
def test_load_hf_dir_reads_safetensors_and_safe_pytorch_bins(tmp_path, bare_keys, safetensors):
  reference = random_hf_model(seed=3, std=0.1, **SMALL)
  path = _save_hf_dir(reference, tmp_path / 'hf', bare_keys=bare_keys, safetensors=safetensors)
  params, model_config = hf.load_hf_dir(path)
  assert model_config == _small_model_config()
  diff = max_abs_diff(our_logits(params, model_config, TOKENS), hf_logits(reference, TOKENS))
  assert diff <= 1e-5


def test_old_checkpoint_buffers_and_tied_head_are_accepted(tmp_path):
  reference = random_hf_model(seed=4, **SMALL)
  state = dict(reference.state_dict())  # has lm_head.weight, tied to the token embedding
  state['transformer.h.0.attn.bias'] = torch.tril(torch.ones(1, 1, 16, 16))  # saved by old versions
  params, _ = hf.params_from_hf(state, reference.config)
  np.testing.assert_array_equal(
    params['tokens_embed']['embedding'], reference.transformer.tokens_embed.weight.detach().numpy()
  )


def test_special_token_rows_are_appended_after_the_vocabulary():
  reference = random_hf_model(seed=5, std=0.1, **SMALL)
  params, model_config = hf.params_from_hf(reference)
  params = add_token_rows(params, 3, jax.random.key(7))
  model_config = dataclasses.replace(model_config, vocab_size=model_config.vocab_size + 3)
  rows = params['tokens_embed']['embedding'][SMALL['vocab_size'] :]
  assert rows.shape == (3, SMALL['n_embd']) and 0.01 < rows.std() < 0.03
  ours = our_logits(params, model_config, TOKENS)
  assert max_abs_diff(ours[..., : SMALL['vocab_size']], hf_logits(reference, TOKENS)) <= 1e-5


_EXECUTED = []


def _record_execution():
  _EXECUTED.append(True)


class _CodeOnLoad:
  def __reduce__(self):
    return _record_execution, ()


def test_pytorch_bin_with_pickled_code_is_refused_without_running_it(tmp_path):
  path = _save_hf_dir(random_hf_model(**SMALL), tmp_path / 'hf', safetensors=False)
  torch.save({'tokens_embed.weight': _CodeOnLoad()}, path / 'pytorch_model.bin')
  with pytest.raises(UserError, match='plain tensor state dict'):
    hf.load_hf_dir(path)
  assert not _EXECUTED


# ------------------------------------------------------------- original release

# The release's per-block arrays in its own order and TF shapes, with the Hugging
# Face names they go to: written out here independently of gpt_jax.hf.
_RELEASE_BLOCK = [
  ('attn.c_attn.weight', lambda d: (1, d, 3 * d)),
  ('attn.c_attn.bias', lambda d: (3 * d,)),
  ('attn.c_proj.weight', lambda d: (1, d, d)),
  ('attn.c_proj.bias', lambda d: (d,)),
  ('ln_1.weight', lambda d: (d,)),
  ('ln_1.bias', lambda d: (d,)),
  ('mlp.c_fc.weight', lambda d: (1, d, 4 * d)),
  ('mlp.c_fc.bias', lambda d: (4 * d,)),
  ('mlp.c_proj.weight', lambda d: (1, 4 * d, d)),
  ('mlp.c_proj.bias', lambda d: (d,)),
  ('ln_2.weight', lambda d: (d,)),
  ('ln_2.bias', lambda d: (d,)),
]


def _write_release(path, vocab=100, n_positions=16, d=32, n_layer=2, seed=0):
  """Random weights in the release layout; returns the equivalent HF state dict."""
  rng = np.random.default_rng(seed)
  names = ['positions_embed.weight', 'tokens_embed.weight']
  shapes = [(n_positions, d), (vocab, d)]
  for i in range(n_layer):
    names += [f'h.{i}.{name}' for name, _ in _RELEASE_BLOCK]
    shapes += [shape(d) for _, shape in _RELEASE_BLOCK]
  arrays = [
    (rng.normal(0, 0.1, s) + (1.0 if '.ln_' in n and n.endswith('weight') else 0.0)).astype(
      np.float32
    )
    for n, s in zip(names, shapes)
  ]
  path.mkdir()
  (path / 'params_shapes.json').write_text(json.dumps([list(s) for s in shapes]))
  flat = np.concatenate([a.reshape(-1) for a in arrays])
  for i, shard in enumerate(np.array_split(flat, 10)):
    np.save(path / f'params_{i}.npy', shard)
  return {
    'transformer.' + n: torch.from_numpy(a.reshape(a.shape[1:]) if a.ndim == 3 else a)
    for n, a in zip(names, arrays)
  }


def test_original_release_reproduces_hugging_face_logits(tmp_path):
  state = _write_release(tmp_path / 'release')
  reference = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**SMALL)).eval()
  missing, unexpected = reference.load_state_dict(state, strict=False)
  assert missing == ['lm_head.weight'] and not unexpected  # the tied head
  assert reference.lm_head.weight is reference.transformer.tokens_embed.weight

  params, model_config = hf.load_openai_release(tmp_path / 'release', n_ctx=16, n_head=4)
  assert model_config == _small_model_config()
  diff = max_abs_diff(our_logits(params, model_config, TOKENS), hf_logits(reference, TOKENS))
  print(f'original release max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5


def test_original_release_keeps_n_ctx_positions(tmp_path):
  state = _write_release(tmp_path / 'release')
  params, model_config = hf.load_openai_release(tmp_path / 'release', n_ctx=8, n_head=4)
  assert (model_config.n_ctx, model_config.vocab_size) == (8, 100)
  np.testing.assert_array_equal(
    params['positions_embed']['embedding'], state['transformer.positions_embed.weight'][:8].numpy()
  )
  np.testing.assert_array_equal(
    params['tokens_embed']['embedding'][:100], state['transformer.tokens_embed.weight'].numpy()
  )


# ------------------------------------------------------------- errors


def test_missing_directories_and_files_are_clear_errors(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    hf.load_hf_dir(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='does not exist'):
    hf.load_openai_release(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='config.json is missing'):
    hf.load_hf_dir(tmp_path / 'empty')
  (tmp_path / 'empty' / 'config.json').write_text(json.dumps({'model_type': 'openai-gpt'}))
  with pytest.raises(UserError, match='neither model.safetensors nor pytorch_model.bin'):
    hf.load_hf_dir(tmp_path / 'empty')
  _write_release(tmp_path / 'release')
  (tmp_path / 'release' / 'params_7.npy').unlink()
  with pytest.raises(UserError, match='not an OpenAI GPT release: missing params_7.npy'):
    hf.load_openai_release(tmp_path / 'release')


def test_not_an_openai_gpt_model_and_unsupported_activation_are_clear_errors(tmp_path):
  reference = random_hf_model(**SMALL)
  gpt2 = _save_hf_dir(reference, tmp_path / 'gpt2', config_changes={'model_type': 'gpt2'})
  with pytest.raises(UserError, match="model_type is 'gpt2', not 'openai-gpt'"):
    hf.load_hf_dir(gpt2)
  relu = _save_hf_dir(reference, tmp_path / 'relu', config_changes={'afn': 'relu'})
  with pytest.raises(UserError, match="afn='relu' is not supported"):
    hf.load_hf_dir(relu)


def test_missing_unexpected_and_misshapen_weights_name_the_parameter(tmp_path):
  reference = random_hf_model(**SMALL)
  state = reference.state_dict()
  without = {k: v for k, v in state.items() if k != 'transformer.h.1.mlp.c_fc.bias'}
  with pytest.raises(UserError, match='h.1.mlp.c_fc.bias is missing'):
    hf.params_from_hf(without, reference.config)
  with pytest.raises(UserError, match=r"unexpected weights \['transformer.ln_f.weight'\]"):
    hf.params_from_hf({**state, 'transformer.ln_f.weight': torch.ones(32)}, reference.config)
  with pytest.raises(
    UserError,
    match=r'h.0.attn.c_attn.weight has shape \(32, 95\), but the '
    r'config needs \(32, 96\)',
  ):
    hf.params_from_hf(
      {**state, 'transformer.h.0.attn.c_attn.weight': torch.zeros(32, 95)}, reference.config
    )
  path = _save_hf_dir(reference, tmp_path / 'hf', config_changes={'n_layer': 3})
  with pytest.raises(UserError, match='h.2.attn.c_attn.weight is missing'):
    hf.load_hf_dir(path)

  _write_release(tmp_path / 'release')
  shapes = json.loads((tmp_path / 'release' / 'params_shapes.json').read_text())
  shapes[2], shapes[4] = [1, 32, 32], [1, 32, 96]  # c_attn and c_proj swapped: same total size
  (tmp_path / 'release' / 'params_shapes.json').write_text(json.dumps(shapes))
  with pytest.raises(UserError, match=r'h.0.attn.c_attn.weight has shape \(32, 32\)'):
    hf.load_openai_release(tmp_path / 'release', n_ctx=16, n_head=4)


def test_export_refuses_bad_params_and_never_leaves_a_partial_directory(
  tmp_path, monkeypatch, tokenizer
):
  model_config = _small_model_config()
  params = _random_params(model_config)
  wrong = jax.tree.map(lambda x: x, params)
  wrong['h_1']['mlp']['c_fc']['kernel'] = jnp.zeros((32, 64))
  with pytest.raises(UserError, match=r'h_1/mlp/c_fc/kernel has shape \(32, 64\)'):
    hf.export_hf_dir(wrong, model_config, tmp_path / 'out')
  with pytest.raises(UserError, match='d_ff=64 cannot be exported'):
    hf.export_hf_dir(params, ModelConfig(**{**model_config.__dict__, 'd_ff': 64}), tmp_path / 'out')

  def failing_copy(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(shutil, 'copyfile', failing_copy)
  with pytest.raises(OSError, match='disk full'):
    hf.export_hf_dir(params, model_config, tmp_path / 'out', tokenizer)
  assert not list(tmp_path.iterdir())  # nothing half-written
  monkeypatch.undo()

  hf.export_hf_dir(params, model_config, tmp_path / 'out')
  with pytest.raises(UserError, match='already exists and is not empty'):
    hf.export_hf_dir(params, model_config, tmp_path / 'out')
