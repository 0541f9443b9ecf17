"""Autoregressive sampling from a GPT with a key/value cache.

One compiled program per (batch shape, length, strategy): the prompts run
through the model once (prefill), filling each layer's key/value cache, then a
`jax.lax.while_loop` feeds back one token per step, attending to the cache
instead of recomputing the prefix. The loop ends when every row has produced a
stop token or `max_new_tokens` are out.

Prompts of different lengths are *left*-padded: all rows then end on the same
cache slot, so every step writes one shared slot (a scalar index, cheap to
update and to shard) and the next-token logits of every row come from the same
column. Padding never counts: each row's positions start at 0 on its first
real token (GPT-1's learned absolute positions), and the padding slots are
masked out of attention, so a padded row decodes exactly as it would alone.

The LSTM baseline (model.arch=lstm) decodes through the same loop: its 'cache' is its
recurrent state (h, c) after the tokens fed so far, and left padding leaves that state
untouched (see gpt_jax.lstm.LSTM.decode).

`generate` is the tokenizer-agnostic core (ids in, ids out); `generate_text`
wraps it for any tokenizer with `encode(str) -> list[int]` and
`decode(list[int]) -> str`; `gpt_jax.weights.load_weights` reads the weights to sample from.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sharding
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig, decoder

_PAD_ID = 0  # fills padding and finished rows; never attended, never returned
_WIDTH_MULTIPLE = 16  # prompt batches are padded to a multiple of this many tokens


def generate(
  params: dict,
  model_config: ModelConfig,
  prompts: Sequence[Sequence[int]],
  max_new_tokens: int,
  *,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  stop_tokens: Sequence[int] = (),
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  return_logits: bool = False,
) -> list[list[int]] | tuple[list[list[int]], list[np.ndarray]]:
  """Continues each prompt by up to `max_new_tokens` tokens.

  Args:
    params: the GPT decoder's unboxed parameters (host or sharded arrays).
    model_config: the decoder's sizes.
    prompts: one list of token ids per row; lengths may differ.
    max_new_tokens: tokens to generate per row (fewer if a stop token comes).
    temperature: divides the logits before sampling; 0 means greedy (argmax).
    top_k: sample among the k most likely tokens only; 0 keeps all.
    top_p: nucleus sampling: among the smallest set of most likely tokens whose
      probability reaches top_p; 1 keeps all.
    stop_tokens: ids that end a row; the stop token itself is not returned.
    seed: seeds the sampling; the same seed gives the same samples.
    mesh: the mesh `params` are sharded over, if any; activations and the
      cache are then sharded by the same logical rules as in training.
    return_logits: also return the model's raw logits for every returned token.

  Returns:
    The new token ids of each row, without the prompt, cut before the first
    stop token; with `return_logits`, also a list of float32 arrays
    (len(row), vocab_size): the logits each of those tokens was chosen from.
  """
  _check_arguments(model_config, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens)
  lengths = np.array([len(p) for p in prompts], np.int32)
  # Extra left padding is free of effect, so round the width up: prompts of
  # similar lengths then share one compiled program.
  width = min(
    -(-lengths.max() // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE, model_config.n_ctx - max_new_tokens
  )
  padded = np.full((len(prompts), width), _PAD_ID, np.int32)
  for row, prompt in enumerate(prompts):
    padded[row, padded.shape[1] - len(prompt) :] = prompt
  # Training may checkpoint activations (remat); decoding has no backward pass.
  model_config = dataclasses.replace(model_config, remat='none')
  with sharding.use_mesh(mesh):
    tokens, logits = _decode(
      params,
      padded,
      lengths,
      jax.random.key(seed),
      model_config=model_config,
      max_new_tokens=max_new_tokens,
      temperature=float(temperature),
      top_k=int(top_k),
      top_p=float(top_p),
      stop_tokens=tuple(int(t) for t in stop_tokens),
      return_logits=return_logits,
    )
  tokens = np.asarray(tokens)
  new_lengths = [_length_before_stop(row, stop_tokens) for row in tokens]
  new_tokens = [row[:n].tolist() for row, n in zip(tokens, new_lengths)]
  if not return_logits:
    return new_tokens
  logits = np.asarray(logits)
  return new_tokens, [row[:n] for row, n in zip(logits, new_lengths)]


def generate_text(
  params,
  model_config: ModelConfig,
  tokenizer,
  prompts: Sequence[str],
  max_new_tokens: int,
  **sampling,
) -> list[str]:
  """`generate` on text: encodes each prompt, returns each continuation decoded.

  `tokenizer` needs `encode(str) -> list[int]` and `decode(list[int]) -> str`;
  `sampling` takes generate's keyword arguments (temperature, top_k, ...).
  """
  ids = [list(tokenizer.encode(prompt)) for prompt in prompts]
  return [
    tokenizer.decode(row) for row in generate(params, model_config, ids, max_new_tokens, **sampling)
  ]


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets the logits of tokens outside the top-k and the top-p nucleus to -inf.

  The nucleus is the smallest set of most likely tokens whose total probability
  reaches top_p: a token stays while the probability of the tokens strictly
  more likely than it is below top_p (so the most likely one always stays).
  Tokens tied with the last one kept stay too.
  """
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if top_p < 1.0:
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    smallest_kept = jnp.min(
      jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1, keepdims=True
    )
    logits = jnp.where(logits < smallest_kept, -jnp.inf, logits)
  return logits


def _next_token(logits, rng, temperature: float, top_k: int, top_p: float):
  """The chosen token of each row of logits (batch, vocab)."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=(
    'model_config',
    'max_new_tokens',
    'temperature',
    'top_k',
    'top_p',
    'stop_tokens',
    'return_logits',
  ),
)
def _decode(
  params,
  prompts,
  lengths,
  rng,
  *,
  model_config,
  max_new_tokens,
  temperature,
  top_k,
  top_p,
  stop_tokens,
  return_logits,
):
  """Prefill, then a while_loop of cached one-token steps.

  prompts: (batch, prompt_len) left-padded ids; lengths: (batch,) real lengths.
  Returns the (batch, max_new_tokens) new tokens (_PAD_ID after a row stops,
  and everywhere once all rows stopped) and their logits, or None.
  """
  model = decoder(model_config)
  batch, prompt_len = prompts.shape
  padding = prompt_len - lengths
  # The last new token is never fed back, but one spare slot keeps shapes simple.
  cache_mask = jnp.arange(prompt_len + max_new_tokens)[None, :] >= padding[:, None]
  stop_ids = jnp.asarray(stop_tokens, jnp.int32)

  def step(variables, tokens, positions):
    logits, variables = model.apply(
      variables, tokens, positions, cache_mask, method='decode', mutable=['cache']
    )
    return logits, variables['cache']

  prompt_positions = jnp.maximum(jnp.arange(prompt_len)[None, :] - padding[:, None], 0)
  logits, cache = step({'params': params}, prompts, prompt_positions)
  first = _next_token(logits, jax.random.fold_in(rng, 0), temperature, top_k, top_p)
  tokens = jnp.full((batch, max_new_tokens), _PAD_ID, jnp.int32).at[:, 0].set(first)
  all_logits = None
  if return_logits:
    all_logits = jnp.zeros((batch, max_new_tokens, logits.shape[-1]), jnp.float32)
    all_logits = all_logits.at[:, 0].set(logits)

  def not_finished(state):
    index, _, _, done, _ = state
    return (index < max_new_tokens) & ~jnp.all(done)

  def decode_one(state):
    index, cache, tokens, done, all_logits = state
    previous = tokens[:, index - 1]
    logits, cache = step(
      {'params': params, 'cache': cache}, previous[:, None], (lengths + index - 1)[:, None]
    )
    token = _next_token(logits, jax.random.fold_in(rng, index), temperature, top_k, top_p)
    token = jnp.where(done, _PAD_ID, token)
    tokens = tokens.at[:, index].set(token)
    if return_logits:
      all_logits = all_logits.at[:, index].set(logits)
    return index + 1, cache, tokens, done | jnp.isin(token, stop_ids), all_logits

  state = (jnp.int32(1), cache, tokens, jnp.isin(first, stop_ids), all_logits)
  _, _, tokens, _, all_logits = jax.lax.while_loop(not_finished, decode_one, state)
  return tokens, all_logits


def _length_before_stop(row: np.ndarray, stop_tokens: Sequence[int]) -> int:
  stops = np.flatnonzero(np.isin(row, stop_tokens))
  return int(stops[0]) if stops.size else len(row)


def _check_arguments(
  model_config, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens
) -> None:
  """Raises one UserError naming the argument a caller got wrong."""
  if not len(prompts):
    raise UserError('no prompts given: pass at least one prompt')
  vocab = model_config.vocab_size
  for row, prompt in enumerate(prompts):
    if not len(prompt):
      raise UserError(f'prompt {row} is empty: every prompt needs at least one token')
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
      raise UserError(
        f'prompt {row} has token ids {bad[:5]} outside the vocabulary '
        f'[0, {vocab}): the tokenizer does not match model.vocab_size={vocab}'
      )
  if max_new_tokens < 1:
    raise UserError(f'max_new_tokens={max_new_tokens} must be at least 1')
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > model_config.n_ctx:
    raise UserError(
      f'a prompt of {longest} tokens + max_new_tokens={max_new_tokens} = '
      f'{longest + max_new_tokens} positions exceeds the model context '
      f'model.n_ctx={model_config.n_ctx}; shorten the prompt or lower max_new_tokens'
    )
  if temperature < 0:
    raise UserError(f'temperature={temperature} must be >= 0 (0 = greedy)')
  if not 0 <= top_k <= vocab:
    raise UserError(f'top_k={top_k} must be between 0 (off) and the vocabulary size {vocab}')
  if not 0 < top_p <= 1:
    raise UserError(f'top_p={top_p} must be in (0, 1] (1 = off)')
  bad = [t for t in stop_tokens if not 0 <= t < vocab]
  if bad:
    raise UserError(f'stop token ids {bad} are outside the vocabulary [0, {vocab})')
