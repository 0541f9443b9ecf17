"""One loader for every source of weights: Hugging Face directories, OpenAI's release, errors."""

import jax
import numpy as np
import pytest
from test_hf import TOKENS, _write_release
from test_model_reference import SMALL, hf_logits, max_abs_diff, our_logits, random_hf_model

from gpt_jax import hf
from gpt_jax.errors import UserError
from gpt_jax.weights import load_weights, with_token_ids


def test_hugging_face_directory_gives_its_weights_shape_and_tokenizer(tmp_path):
  reference = random_hf_model(seed=3, **SMALL)
  params, model_config = hf.params_from_hf(reference)
  tokenizer = tmp_path / 'tokenizer.model'
  tokenizer.write_bytes(b'not read unless needed')
  hf.export_hf_dir(params, model_config, tmp_path / 'hf')
  weights = load_weights(tmp_path / 'hf', tokenizer_required=False)
  assert weights.model_config == model_config and weights.tokenizer is None
  assert 'Hugging Face weights' in weights.source
  assert max_abs_diff(our_logits(weights.params, weights.model_config, TOKENS),
                      hf_logits(reference, TOKENS)) <= 1e-5
  with pytest.raises(UserError, match='has no tokenizer.model'):
    load_weights(tmp_path / 'hf')


def test_openai_release_is_recognised_by_its_files(tmp_path):
  _write_release(tmp_path / 'release', d=48)  # GPT-1's 12 heads need a width they divide
  weights = load_weights(tmp_path / 'release', tokenizer_required=False)
  assert (weights.model_config.n_layer, weights.model_config.n_head,
          weights.model_config.vocab_size) == (2, 12, 100)
  assert "OpenAI's released weights" in weights.source


def test_new_token_ids_get_fresh_rows_after_the_vocabulary(tmp_path):
  reference = random_hf_model(seed=4, **SMALL)
  hf.export_hf_dir(*hf.params_from_hf(reference), tmp_path / 'hf')
  weights = load_weights(tmp_path / 'hf', tokenizer_required=False)
  assert with_token_ids(weights, [0, 99], seed=0) is weights  # nothing to add
  grown = with_token_ids(weights, [5, 102], seed=0)
  embedding = np.asarray(grown.params['tokens_embed']['embedding'])
  assert grown.model_config.vocab_size == 103 and embedding.shape == (103, SMALL['n_embd'])
  np.testing.assert_array_equal(embedding[:100], weights.params['tokens_embed']['embedding'])
  expected = jax.random.normal(jax.random.key(0), (3, SMALL['n_embd'])) * 0.02
  np.testing.assert_allclose(embedding[100:], expected, rtol=1e-6)


def test_ids_to_redraw_get_fresh_rows_inside_the_vocabulary(tmp_path):
  reference = random_hf_model(seed=4, **SMALL)
  hf.export_hf_dir(*hf.params_from_hf(reference), tmp_path / 'hf')
  weights = load_weights(tmp_path / 'hf', tokenizer_required=False)
  grown = with_token_ids(weights, [7, 101], seed=3, redraw=[7, 5, 101])
  embedding = np.asarray(grown.params['tokens_embed']['embedding'])
  old = np.asarray(weights.params['tokens_embed']['embedding'])
  # One draw: the re-drawn ids inside the vocabulary in id order, then the appended rows.
  expected = np.asarray(jax.random.normal(jax.random.key(3), (4, SMALL['n_embd']))) * 0.02
  np.testing.assert_allclose(embedding[[5, 7, 100, 101]], expected, rtol=1e-6)
  kept = [i for i in range(100) if i not in (5, 7)]
  np.testing.assert_array_equal(embedding[kept], old[kept])
  assert grown.model_config.vocab_size == 102


@pytest.mark.parametrize('setup, message', [
    (None, 'finetune.init=.*nowhere is not a directory'),
    ('empty', 'holds no weights gpt_jax can read'),
])
def test_sources_it_cannot_read_are_one_line_errors(tmp_path, setup, message):
  source = tmp_path / 'nowhere'
  if setup == 'empty':
    source = tmp_path / 'empty'
    source.mkdir()
  with pytest.raises(UserError, match=message) as error:
    load_weights(source, flag='finetune.init')
  assert '\n' not in str(error.value)
