"""Our GPT against Hugging Face's OpenAIGPTLMHeadModel, the independent reference.

Hugging Face models are built from a config with random weights (nothing is
downloaded); every parameter, biases and LayerNorms included, is randomised so
a wrongly mapped tensor cannot hide behind an all-zeros or all-ones default.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from gpt_jax import hf
from gpt_jax.model import GPT, ModelConfig

SMALL = dict(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def random_hf_model(seed: int = 0, std: float = 0.02, **config):
  """An eval-mode HF model whose every parameter is random (LayerNorm scales around 1)."""
  torch.manual_seed(seed)
  model = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**config)).eval()
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      is_ln_scale = '.ln_' in name and name.endswith('.weight')
      parameter.copy_(torch.randn_like(parameter) * std + (1.0 if is_ln_scale else 0.0))
  return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def our_logits(params, model_config: ModelConfig, tokens: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(GPT(model_config).apply)({'params': params}, jnp.asarray(tokens)))


def max_abs_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope='module')
def full_hf_model():
  return random_hf_model(seed=1)  # the paper's 117M shape with the released 40,478 vocabulary


@pytest.mark.parametrize('causal_block', [128, 5])  # 5: the attention in blocks of 5, 5, 5, 1
def test_small_model_logits_match_hugging_face(causal_block, monkeypatch):
  monkeypatch.setattr('gpt_jax.attention.CAUSAL_BLOCK', causal_block)
  reference = random_hf_model(std=0.1, **SMALL)
  params, model_config = hf.params_from_hf(reference)
  tokens = np.random.default_rng(0).integers(0, SMALL['vocab_size'], (2, 16))
  diff = max_abs_diff(our_logits(params, model_config, tokens), hf_logits(reference, tokens))
  print(f'small model max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5


def test_full_size_model_logits_match_hugging_face(full_hf_model):
  params, model_config = hf.params_from_hf(full_hf_model)
  assert model_config == ModelConfig()  # the paper's 117M shape
  tokens = np.random.default_rng(0).integers(0, 40478, (2, 8))
  diff = max_abs_diff(our_logits(params, model_config, tokens), hf_logits(full_hf_model, tokens))
  print(f'full-size model max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5


def test_parameter_count_is_the_papers_and_hugging_faces(full_hf_model):
  shapes = jax.eval_shape(
    lambda: GPT(ModelConfig()).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  )
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  # parameters() lists the tied lm_head / token embedding once.
  theirs = sum(p.numel() for p in full_hf_model.parameters())
  assert ours == 116_534_784
  assert theirs == ours
