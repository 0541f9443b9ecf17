"""Small shared builders for tests."""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import xla_env

from gpt_jax import dryrun, train
from gpt_jax.configs import tiny
from gpt_jax.model import ModelConfig


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  """The tiny config shrunk further, with a byte-sized vocabulary."""
  config = tiny.get_config()
  config.model.update(vocab_size=64, n_ctx=32, n_embd=32, n_head=4, d_ff=64)
  config.model.update(**model_overrides)
  config.train.update(batch_size=8, seq_len=16)
  return config


def make_trainer(config, mesh, total_steps: int = 10):
  return train.make_pretrainer(
    ModelConfig.from_config(config.model), config.optim, mesh, config.train.seq_len, total_steps
  )


def max_relative_difference(tree_a, tree_b) -> float:
  """Largest per-parameter ||a - b|| / ||b|| (norms over each whole array)."""
  diffs = jax.tree.map(
    lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)), tree_a, tree_b
  )
  return max(jax.tree.leaves(diffs))


def prepared_local_corpus(tmp_path) -> list[str]:
  """Config flags for a small local_text corpus whose tokenizer and token store are built."""
  import json

  from gpt_jax import cli

  corpus = tmp_path / 'corpus.jsonl'
  corpus.write_text(
    ''.join(
      json.dumps({'text': f'the quick brown fox {i} jumps over the lazy dog. ' * 20}) + '\n'
      for i in range(40)
    )
  )
  flags = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={corpus}',
    f'--config.data.data_dir={tmp_path / "data"}',
    '--config.data.validation_fraction=0.3',
    '--config.model.vocab_size=320',
  ]
  for mode in ('tokenizer', 'prepare'):
    assert cli.main([mode, '--config', 'tiny', *flags]) == 0, f'gpt-jax {mode} failed'
  return flags


def stdlib_documents() -> list[str]:
  """Every module docstring document of the running Python's standard library."""
  from gpt_jax.data.builders import stdlib_docs

  texts = [
    stdlib_docs.module_docstrings(path.read_bytes()) for _, path in stdlib_docs.stdlib_modules()
  ]
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
  trained.train_from_iterator(
    documents,
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=['<unk>'],
      end_of_word_suffix='</w>',
      show_progress=False,
    ),
  )
  trained.model.save(str(directory))
  return trained.get_vocab_size()


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def numpy_log_probs(params, config, tokens: np.ndarray) -> np.ndarray:
  """GPT-1's forward pass in float64 (post-LN, tanh GELU, tied output): log p(next token)."""
  p = {k: v for k, v in params.items()}
  x = (
    p['tokens_embed']['embedding'][tokens] + p['positions_embed']['embedding'][: tokens.shape[-1]]
  ).astype(np.float64)
  length = tokens.shape[-1]
  causal = np.tril(np.ones((length, length), bool))
  for i in range(config.n_layer):
    block = {
      k: {n: np.asarray(a, np.float64) for n, a in v.items()}
      for k, v in {
        'attn': p[f'h_{i}']['attn']['c_attn'],
        'proj': p[f'h_{i}']['attn']['c_proj'],
        'fc': p[f'h_{i}']['mlp']['c_fc'],
        'out': p[f'h_{i}']['mlp']['c_proj'],
        'ln_1': p[f'h_{i}']['ln_1'],
        'ln_2': p[f'h_{i}']['ln_2'],
      }.items()
    }
    q, k, v = np.moveaxis(
      np.einsum('te,eshd->sthd', x, block['attn']['kernel']) + block['attn']['bias'][:, None], 1, 2
    )  # (heads, t, d) each
    scores = np.where(causal, q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    attended = (weights / weights.sum(-1, keepdims=True)) @ v
    attn = np.einsum('htd,hde->te', attended, block['proj']['kernel']) + block['proj']['bias']
    n = _layer_norm(
      x + attn, block['ln_1']['scale'], block['ln_1']['bias'], config.layer_norm_epsilon
    )
    h = n @ block['fc']['kernel'] + block['fc']['bias']
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    x = _layer_norm(
      n + h @ block['out']['kernel'] + block['out']['bias'],
      block['ln_2']['scale'],
      block['ln_2']['bias'],
      config.layer_norm_epsilon,
    )
  logits = x @ np.asarray(p['tokens_embed']['embedding'], np.float64).T
  logits -= logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def random_lm_dir(directory, scale: float = 8.0):
  """A small random GPT with a GPT-1-format BPE, written as a Hugging Face directory (what
  `--init` reads). Weights are scaled up from N(0, 0.02) so the next-token distributions
  are far from uniform and answers differ clearly in likelihood."""
  from pathlib import Path

  import flax.linen as nn

  from gpt_jax import hf
  from gpt_jax.data.hf_tokenizer import read_gpt1_bpe
  from gpt_jax.model import GPT

  directory = Path(directory)
  bpe = directory.parent / f'{directory.name}_bpe'
  bpe.mkdir()
  write_gpt1_bpe(bpe, stdlib_documents()[:100], 400)
  tokenizer = read_gpt1_bpe(bpe / 'vocab.json', bpe / 'merges.txt')
  config = ModelConfig(
    vocab_size=tokenizer.vocab_size, n_ctx=64, n_embd=32, n_layer=2, n_head=4, d_ff=128
  )
  params = GPT(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  params = jax.tree.map(lambda x: np.asarray(x) * scale, nn.unbox(params))
  hf.export_hf_dir(params, config, directory, tokenizer)
  return directory


# The TPU dry-run tests compile for TPU slices through libtpu (no TPU needed); the README's
# test command installs it with the tpu extra, so CI runs them.
needs_libtpu = pytest.mark.skipif(
  not dryrun.libtpu_installed(),
  reason='libtpu is not installed: pip install "gpt_jax[tpu]" (CI does; needs no TPU)',
)


def cli_environment(compile_cache_dir) -> dict[str, str]:
  """The environment of a CLI run in a process of its own: one CPU device, the suite's quick
  compile, and a compile cache of the test's own, so later runs load the compiled steps."""
  env = dict(
    os.environ,
    XLA_FLAGS=xla_env.QUICK_COMPILE,
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(compile_cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  env.pop('GPT_JAX_TRACEBACK', None)
  return env


def tensorboard_events(directory) -> list:
  """Every Event of the `events.out.tfevents.*` files in `directory`, parsed with tensorboardX's
  protos; each record's length and payload checksums (TFRecord's masked crc32c) are checked."""
  import struct

  import google_crc32c
  from tensorboardX.proto import event_pb2

  def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  events = []
  for path in sorted(directory.glob('events.out.tfevents.*')):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      header, (length_crc,) = data[offset : offset + 8], struct.unpack_from('<I', data, offset + 8)
      (length,) = struct.unpack('<Q', header)
      payload = data[offset + 12 : offset + 12 + length]
      (payload_crc,) = struct.unpack_from('<I', data, offset + 12 + length)
      assert (length_crc, payload_crc) == (masked_crc(header), masked_crc(payload)), path
      events.append(event_pb2.Event.FromString(payload))
      offset += 12 + length + 4
  return events


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalar events in `directory`."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for event in tensorboard_events(directory):
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars
