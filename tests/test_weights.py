"""One loader for every source of weights: Hugging Face directories, OpenAI's release, errors."""

import shutil

import huggingface_hub
import jax
import numpy as np
import pytest
import transformers
from helpers import stdlib_documents, write_gpt1_bpe
from test_hf import TOKENS, _write_release
from test_model_reference import SMALL, hf_logits, max_abs_diff, our_logits, random_hf_model

from gpt_jax import cli, hf
from gpt_jax.data.hf_tokenizer import HFTokenizer
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
  assert (
    max_abs_diff(
      our_logits(weights.params, weights.model_config, TOKENS), hf_logits(reference, TOKENS)
    )
    <= 1e-5
  )
  with pytest.raises(UserError, match='has no tokenizer: '):
    load_weights(tmp_path / 'hf')


def test_openai_release_is_recognised_by_its_files(tmp_path):
  _write_release(tmp_path / 'release', d=48)  # GPT-1's 12 heads need a width they divide
  weights = load_weights(tmp_path / 'release', tokenizer_required=False)
  assert (
    weights.model_config.n_layer,
    weights.model_config.n_head,
    weights.model_config.vocab_size,
  ) == (2, 12, 100)
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


@pytest.mark.parametrize(
  'setup, message',
  [
    (None, 'finetune.init=.*nowhere is not a directory'),
    ('empty', 'holds no weights gpt_jax can read'),
  ],
)
def test_sources_it_cannot_read_are_one_line_errors(tmp_path, setup, message):
  source = tmp_path / 'nowhere'
  if setup == 'empty':
    source = tmp_path / 'empty'
    source.mkdir()
  with pytest.raises(UserError, match=message) as error:
    load_weights(source, flag='finetune.init')
  assert '\n' not in str(error.value)


# ------------------------------------------------ GPT-1 as published: its BPE, the hub cache


@pytest.fixture(scope='module')
def gpt1_bpe(tmp_path_factory):
  """GPT-1-format vocab.json + merges.txt and its vocabulary size."""
  directory = tmp_path_factory.mktemp('bpe')
  return directory, write_gpt1_bpe(directory, stdlib_documents()[:100], 400)


def _hf_openai_gpt_dir(directory, bpe_dir, vocab_size: int):
  """A directory laid out as Hugging Face publishes openai-gpt: weights, config, BPE tables."""
  reference = random_hf_model(seed=5, **{**SMALL, 'vocab_size': vocab_size})
  reference.save_pretrained(directory)
  for name in ('vocab.json', 'merges.txt'):
    shutil.copy(bpe_dir / name, directory / name)
  return reference


def test_published_openai_gpt_directory_brings_gpt1_bpe(tmp_path, gpt1_bpe):
  bpe_dir, vocab_size = gpt1_bpe
  reference = _hf_openai_gpt_dir(tmp_path / 'openai-gpt', bpe_dir, vocab_size)
  weights = load_weights(tmp_path / 'openai-gpt')
  assert isinstance(weights.tokenizer, HFTokenizer)
  assert (
    weights.tokenizer.encode('The cat.')
    == transformers.OpenAIGPTTokenizer.from_pretrained(str(bpe_dir))(
      'The cat.', add_special_tokens=False
    )['input_ids']
  )
  assert (
    max_abs_diff(
      our_logits(weights.params, weights.model_config, TOKENS), hf_logits(reference, TOKENS)
    )
    <= 1e-5
  )
  grown = with_token_ids(weights, [weights.tokenizer.extract_id], seed=0)
  assert grown.model_config.vocab_size == vocab_size + 3  # <s>, $, <e> as in the paper


def test_openai_release_with_its_bpe_files_gets_its_tokenizer(tmp_path, gpt1_bpe):
  bpe_dir, vocab_size = gpt1_bpe
  _write_release(tmp_path / 'release', vocab=vocab_size, d=48)
  shutil.copy(bpe_dir / 'vocab.json', tmp_path / 'release' / 'encoder_bpe_40000.json')
  shutil.copy(bpe_dir / 'merges.txt', tmp_path / 'release' / 'vocab_40000.bpe')
  weights = load_weights(tmp_path / 'release')
  assert weights.tokenizer.text_vocab_size == weights.model_config.vocab_size == vocab_size


def _hub_cache(root, repo_id: str, files_from) -> None:
  """huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/HASH/...}."""
  commit = 'a' * 40
  repo = root / f'models--{repo_id.replace("/", "--")}'
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(commit)
  shutil.copytree(files_from, repo / 'snapshots' / commit)


def test_hub_id_is_read_from_the_cache_offline(tmp_path, gpt1_bpe, monkeypatch):
  bpe_dir, vocab_size = gpt1_bpe
  reference = _hf_openai_gpt_dir(tmp_path / 'openai-gpt', bpe_dir, vocab_size)
  _hub_cache(tmp_path / 'hub', 'openai-community/openai-gpt', tmp_path / 'openai-gpt')
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  weights = load_weights('hf:openai-community/openai-gpt')
  assert isinstance(weights.tokenizer, HFTokenizer)
  assert (
    max_abs_diff(
      our_logits(weights.params, weights.model_config, TOKENS), hf_logits(reference, TOKENS)
    )
    <= 1e-5
  )


def test_bad_gpt1_sources_are_one_line_cli_errors(tmp_path, gpt1_bpe, monkeypatch, capsys):
  bpe_dir, vocab_size = gpt1_bpe
  _hf_openai_gpt_dir(tmp_path / 'no_tokenizer', bpe_dir, vocab_size)
  for name in ('vocab.json', 'merges.txt'):
    (tmp_path / 'no_tokenizer' / name).unlink()
  random_hf_model(seed=5, **{**SMALL, 'vocab_size': vocab_size - 10}).save_pretrained(
    tmp_path / 'too_small'
  )
  for name in ('vocab.json', 'merges.txt'):
    shutil.copy(bpe_dir / name, tmp_path / 'too_small' / name)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  cases = [
    (tmp_path / 'no_tokenizer', 'no_tokenizer has no tokenizer: '),
    (
      tmp_path / 'too_small',
      f'has {vocab_size:,} tokens but the embedding has {vocab_size - 10:,} rows',
    ),
    (
      'hf:openai-community/openai-gpt',
      'hf:openai-community/openai-gpt is not in the Hugging Face cache',
    ),
  ]
  capsys.readouterr()  # transformers' progress bars while saving
  for source, message in cases:
    assert cli.main(['sample', '--workdir', str(source), '--prompt', 'the']) == 1
    error = capsys.readouterr().err
    assert error.startswith('gpt-jax: error: ') and message in error and error.count('\n') == 1
