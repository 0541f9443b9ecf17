"""KV-cache sampling against independent references.

References: recomputing the whole sequence through the plain forward pass at
every step (no cache), Hugging Face's `generate` on the same random weights,
hand-made distributions for the filters, and numpy float64 probabilities for
the sampling statistics.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from test_model_reference import random_hf_model

from gpt_jax import cli, hf, sample, sharding
from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.model import GPT

HF_CONFIG = dict(vocab_size=96, n_positions=24, n_embd=32, n_layer=2, n_head=4)
PROMPTS = [[5, 17, 3, 88], [42], [7, 7, 1, 60, 2, 33, 9]]


@pytest.fixture(scope='module')
def hf_model():
  return random_hf_model(seed=1, std=0.15, **HF_CONFIG)


@pytest.fixture(scope='module')
def model(hf_model):
  """(params, model_config) of the same random weights as `hf_model`."""
  return hf.params_from_hf(hf_model)


@functools.cache
def _jitted_forward(model_config):
  return jax.jit(GPT(model_config).apply)


def recompute_greedy(params, model_config, prompt, max_new_tokens):
  """Greedy tokens and their logits, running the full sequence through the model every step."""
  forward = _jitted_forward(model_config)
  sequence, all_logits = list(prompt), []
  for _ in range(max_new_tokens):
    # Right-padded to the full context so one compilation serves every length;
    # the causal mask keeps the padding after the last token out of its logits.
    window = np.zeros((1, model_config.n_ctx), np.int32)
    window[0, : len(sequence)] = sequence
    logits = np.asarray(forward({'params': params}, window))[0, len(sequence) - 1]
    all_logits.append(logits)
    sequence.append(int(np.argmax(logits)))
  return sequence[len(prompt) :], np.stack(all_logits)


def test_cached_greedy_equals_full_recompute_token_for_token(model):
  params, model_config = model
  prompt = PROMPTS[0]
  tokens, logits = sample.generate(
    params, model_config, [prompt], 12, temperature=0, return_logits=True
  )
  expected_tokens, expected_logits = recompute_greedy(params, model_config, prompt, 12)
  assert tokens == [expected_tokens]
  diff = np.abs(logits[0] - expected_logits).max()
  print(f'cached vs recomputed max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5
  assert len(set(expected_tokens)) >= 4  # weights random enough not to repeat one token


def test_batched_prompts_of_different_lengths_decode_as_each_alone(model):
  params, model_config = model
  batched = sample.generate(params, model_config, PROMPTS, 10, temperature=0)
  for prompt, row in zip(PROMPTS, batched):
    assert row == recompute_greedy(params, model_config, prompt, 10)[0]
    assert row == sample.generate(params, model_config, [prompt], 10, temperature=0)[0]


def test_greedy_matches_hugging_face_generate(model, hf_model):
  params, model_config = model
  ours = sample.generate(params, model_config, PROMPTS, 15, temperature=0)
  for prompt, row in zip(PROMPTS, ours):
    with torch.no_grad():
      theirs = hf_model.generate(
        torch.tensor([prompt]),
        max_new_tokens=15,
        min_new_tokens=15,
        do_sample=False,
        use_cache=True,
      )
    assert row == theirs[0, len(prompt) :].tolist()


def test_the_whole_context_can_be_used_and_one_more_position_is_a_clear_error(model):
  params, model_config = model  # n_ctx = 24
  prompt = list(range(20))
  tokens = sample.generate(params, model_config, [prompt, [3]], 4, temperature=0)
  assert tokens[0] == recompute_greedy(params, model_config, prompt, 4)[0]
  with pytest.raises(
    UserError,
    match=r'prompt of 20 tokens \+ max_new_tokens=5 = 25 .*'
    r'model.n_ctx=24',
  ):
    sample.generate(params, model_config, [prompt, [3]], 5)


def test_stop_tokens_end_each_row_on_its_own(model):
  params, model_config = model
  unstopped = [recompute_greedy(params, model_config, p, 10)[0] for p in PROMPTS]
  stop = unstopped[0][3]
  stopped = sample.generate(params, model_config, PROMPTS, 10, temperature=0, stop_tokens=[stop])
  for row, full in zip(stopped, unstopped):
    assert row == (full[: full.index(stop)] if stop in full else full)
  assert len(stopped[0]) == unstopped[0].index(stop)


def test_top_k_one_is_greedy(model):
  params, model_config = model
  greedy = sample.generate(params, model_config, PROMPTS, 8, temperature=0)
  assert (
    sample.generate(params, model_config, PROMPTS, 8, temperature=0.8, top_k=1, seed=5) == greedy
  )


@pytest.mark.parametrize(
  'top_p, kept',
  [
    (0.3, {1}),  # 0.5 alone reaches 0.3
    (0.75, {1, 3}),  # 0.5 + 0.3 reaches 0.75; 0.5 alone does not
    (0.85, {1, 3, 2}),  # + 0.15 = 0.95
    (0.97, {0, 1, 2, 3}),  # + 0.04 = 0.99
    (1.0, {0, 1, 2, 3, 4}),
  ],
)
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p, kept):
  probs = np.array([0.04, 0.5, 0.15, 0.3, 0.01])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  filtered = np.asarray(sample.filter_logits(logits, top_p=top_p))[0]
  assert set(np.flatnonzero(np.isfinite(filtered))) == kept
  assert np.array_equal(filtered[list(kept)], np.asarray(logits)[0, list(kept)])


def test_top_k_keeps_the_k_most_likely():
  logits = jnp.asarray([[0.1, 2.0, -1.0, 1.5, 0.3]])
  filtered = np.asarray(sample.filter_logits(logits, top_k=3))[0]
  assert set(np.flatnonzero(np.isfinite(filtered))) == {1, 3, 4}


def test_samples_follow_the_temperature_scaled_top_k_distribution(model):
  """4,000 first tokens of one prompt against float64 numpy probabilities (chi-square)."""
  params, model_config = model
  prompt, n, temperature, top_k = PROMPTS[0], 4000, 0.7, 4
  logits = recompute_greedy(params, model_config, prompt, 1)[1][0].astype(np.float64)
  top = np.argsort(logits)[::-1][:top_k]
  expected = np.exp((logits[top] - logits[top].max()) / temperature)
  expected /= expected.sum()
  tokens = sample.generate(
    params, model_config, [prompt] * n, 1, temperature=temperature, top_k=top_k, seed=0
  )
  tokens = np.array(tokens)[:, 0]
  assert set(tokens) <= set(top)
  counts = np.array([(tokens == t).sum() for t in top])
  p_value = scipy.stats.chisquare(counts, expected * n).pvalue
  print(f'expected {np.round(expected * n)}, counted {counts}, p={p_value:.3f}')
  assert p_value > 1e-3


def test_same_seed_same_samples_other_seed_other_samples(model):
  params, model_config = model

  def draw(seed):
    return sample.generate(
      params, model_config, PROMPTS, 12, temperature=1.0, top_p=0.95, seed=seed
    )

  assert draw(0) == draw(0)
  assert draw(0) != draw(1)


def test_sharded_params_on_a_mesh_decode_like_one_device(model):
  params, model_config = model
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  boxed = jax.eval_shape(
    lambda: GPT(model_config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  )
  shardings = sharding.logical_to_mesh(nn.get_partition_spec(boxed), mesh)
  sharded = jax.device_put(params, shardings)
  tokens = sample.generate(sharded, model_config, PROMPTS, 6, temperature=0, mesh=mesh)
  for prompt, row in zip(PROMPTS, tokens):
    assert row == recompute_greedy(params, model_config, prompt, 6)[0]


class CharTokenizer:
  """Letters a-z and space as ids 0-26."""

  alphabet = 'abcdefghijklmnopqrstuvwxyz '

  def encode(self, text):
    return [self.alphabet.index(c) for c in text]

  def decode(self, ids):
    return ''.join(self.alphabet[i % len(self.alphabet)] for i in ids)


def test_generate_text_round_trips_through_the_tokenizer(model):
  params, model_config = model
  tokenizer = CharTokenizer()
  texts = sample.generate_text(params, model_config, tokenizer, ['hello', 'a b'], 5, temperature=0)
  ids = sample.generate(
    params, model_config, [tokenizer.encode('hello'), tokenizer.encode('a b')], 5, temperature=0
  )
  assert texts == [tokenizer.decode(row) for row in ids]


@pytest.mark.parametrize(
  'prompts, kwargs, message',
  [
    ([], {}, 'no prompts'),
    ([[1], []], {}, 'prompt 1 is empty'),
    ([[1, 96]], {}, r'token ids \[96\] outside the vocabulary'),
    ([[1]], dict(max_new_tokens=0), 'max_new_tokens=0'),
    ([[1]], dict(temperature=-1), 'temperature=-1'),
    ([[1]], dict(top_p=0), 'top_p=0'),
    ([[1]], dict(top_k=97), 'top_k=97'),
    ([[1]], dict(stop_tokens=[-1]), r'stop token ids \[-1\]'),
  ],
)
def test_bad_arguments_raise_one_clear_error(model, prompts, kwargs, message):
  params, model_config = model
  kwargs = {'max_new_tokens': 3, **kwargs}
  with pytest.raises(UserError, match=message):
    sample.generate(params, model_config, prompts, **kwargs)


# ------------------------------------------------------------- the CLI


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
  """A Hugging Face directory as `gpt-jax export` writes it: random weights + a real tokenizer."""
  root = tmp_path_factory.mktemp('sample_cli')
  text = ' '.join(f'the {w} sat on the mat and the {w} ran' for w in ('cat', 'dog', 'fox') * 60)
  tokenizer = tokenizer_lib.train_tokenizer(
    [text], root / 'bpe.model', vocab_size=300, max_bytes=10**6
  )
  params, model_config = hf.params_from_hf(
    random_hf_model(seed=1, std=0.15, **{**HF_CONFIG, 'vocab_size': tokenizer.vocab_size})
  )
  hf.export_hf_dir(params, model_config, root / 'export', tokenizer)
  return root / 'export', tokenizer, params, model_config


def test_cli_sample_prints_each_prompt_with_its_continuation(export_dir, tmp_path, capsys):
  directory, tokenizer, params, model_config = export_dir
  prompts_file = tmp_path / 'prompts.txt'
  prompts_file.write_text('the dog\n\nthe mat and\n')
  assert (
    cli.main(
      [
        'sample',
        '--workdir',
        str(directory),
        '--prompt',
        'the cat',
        '--prompts_file',
        str(prompts_file),
        '--max_new_tokens',
        '6',
        '--temperature',
        '0',
      ]
    )
    == 0
  )
  prompts = ['the cat', 'the dog', 'the mat and']
  expected = sample.generate(
    params,
    model_config,
    [tokenizer.encode(p) for p in prompts],
    6,
    temperature=0,
    stop_tokens=[tokenizer.eod_id],
  )
  blocks = capsys.readouterr().out.rstrip('\n').split('\n' + '-' * 40 + '\n')
  assert blocks == [p + tokenizer.decode(ids) for p, ids in zip(prompts, expected)]


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--max_new_tokens', '30'], 'max_new_tokens=30'),
    ([], 'at least one --prompt'),
  ],
)
def test_cli_sample_user_errors_are_one_line(export_dir, capsys, flags, message):
  directory = export_dir[0]
  prompt = ['--prompt', 'the cat'] if flags else []
  assert cli.main(['sample', '--workdir', str(directory), *prompt, *flags]) == 1
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1
