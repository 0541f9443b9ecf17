"""Small shared builders for tests."""

import jax
import jax.numpy as jnp
import ml_collections

from gpt_jax.configs import tiny
from gpt_jax import train
from gpt_jax.model import ModelConfig


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  """The tiny config shrunk further, with a byte-sized vocabulary."""
  config = tiny.get_config()
  config.model.update(vocab_size=64, n_ctx=32, n_embd=32, n_head=4, d_ff=64)
  config.model.update(**model_overrides)
  config.train.update(batch_size=8, seq_len=16)
  return config


def make_trainer(config, mesh, total_steps: int = 10):
  return train.make_pretrainer(ModelConfig.from_config(config.model), config.optim, mesh,
                               config.train.seq_len, total_steps)


def max_relative_difference(tree_a, tree_b) -> float:
  """Largest per-parameter ||a - b|| / ||b|| (norms over each whole array)."""
  diffs = jax.tree.map(
      lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)), tree_a, tree_b)
  return max(jax.tree.leaves(diffs))


def prepared_local_corpus(tmp_path) -> list[str]:
  """Config flags for a small local_text corpus whose tokenizer and token store are built."""
  import json

  from gpt_jax import cli
  corpus = tmp_path / 'corpus.jsonl'
  corpus.write_text(''.join(json.dumps({'text': f'the quick brown fox {i} jumps over the lazy '
                                                f'dog. ' * 20}) + '\n' for i in range(40)))
  flags = ['--config.data.corpus=local_text', f'--config.data.text_glob={corpus}',
           f'--config.data.data_dir={tmp_path / "data"}', '--config.data.validation_fraction=0.3',
           '--config.model.vocab_size=320']
  for mode in ('tokenizer', 'prepare'):
    assert cli.main([mode, '--config', 'tiny', *flags]) == 0, f'gpt-jax {mode} failed'
  return flags


def stdlib_documents() -> list[str]:
  """Every module docstring document of the running Python's standard library."""
  from gpt_jax.data.builders import stdlib_docs
  texts = [stdlib_docs.module_docstrings(path.read_bytes())
           for _, path in stdlib_docs.stdlib_modules()]
  return [text for text in texts if text.strip()]


def write_gpt1_bpe(directory, documents, vocab_size: int) -> int:
  """GPT-1-format vocab.json + merges.txt (lower-case, `</w>` suffix) trained with `tokenizers`'
  BPE trainer on `documents`, written into `directory`; returns the vocabulary size."""
  import tokenizers
  from tokenizers import normalizers, pre_tokenizers, trainers
  from tokenizers.models import BPE

  trained = tokenizers.Tokenizer(BPE(unk_token='<unk>', end_of_word_suffix='</w>'))
  trained.normalizer = normalizers.Lowercase()
  trained.pre_tokenizer = pre_tokenizers.Whitespace()
  trained.train_from_iterator(documents, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=['<unk>'], end_of_word_suffix='</w>',
      show_progress=False))
  trained.model.save(str(directory))
  return trained.get_vocab_size()
