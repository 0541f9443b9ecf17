"""The paper's four input transformations, and the fine-tuning objective on them.

Every example becomes one or more token sequences of at most `max_len` tokens
(Radford et al. 2018, figure 1), padded to a common `length`:

  classification    <s> text <e>                                tokens (length,)
  entailment        <s> premise $ hypothesis <e>                tokens (length,)
  similarity        <s> A $ B <e>  and  <s> B $ A <e>           tokens (2, length)
  multiple_choice   <s> context $ choice_k <e>, one per choice  tokens (n_choices, length)

Sequences are padded with the tokenizer's pad id after `<e>`: to max_len, or
(`length=0`) only as far as the example's longest sequence, which
`tasks.batches` then pads to its batch's bucket (`pad_to_length`). The model reads
its final hidden state at `extract_index`, the position of `<e>`. `lm_mask`
marks every real token after `<s>`, up to and including `<e>`: the tokens the
auxiliary language-model loss predicts.

Examples are plain dicts (see gpt_jax.tasks.task).
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.errors import UserError
from gpt_jax.tasks.task import FIELDS, check_kind


class Tokenizer(Protocol):
  """What the transformations need from a tokenizer: text to ids, and the special ids."""

  pad_id: int
  start_id: int  # <s>
  delimiter_id: int  # $
  extract_id: int  # <e>

  def encode(self, text: str) -> list[int]: ...


def share_budget(lengths: Sequence[int], budget: int) -> list[int]:
  """How many tokens each segment keeps so that together they fit in `budget`.

  Longest first: the longest segment is cut down to the next longest, then both
  are cut together, and so on (a cap on every segment's length), so a short
  premise survives a long hypothesis whole. Tokens the cap leaves over go to the
  earliest capped segments, one each.
  """
  if sum(lengths) <= budget:
    return list(lengths)
  low, high = 0, max(lengths)  # the largest cap whose total fits
  while low < high:
    cap = (low + high + 1) // 2
    if sum(min(length, cap) for length in lengths) <= budget:
      low = cap
    else:
      high = cap - 1
  keep = [min(length, low) for length in lengths]
  spare = budget - sum(keep)
  for i, length in enumerate(lengths):
    if spare and length > low:
      keep[i] += 1
      spare -= 1
  return keep


def _fit(segments, max_len: int, keep_tail: Sequence[bool]):
  """Cuts segments to share the room `<s>`, the delimiters and `<e>` leave in max_len."""
  budget = max_len - len(segments) - 1
  if budget < len(segments):
    raise UserError(
      f'max_len={max_len} leaves no room for text in a sequence of '
      f'{len(segments)} segment(s); use at least {2 * len(segments) + 1}'
    )
  keep = share_budget([len(s) for s in segments], budget)
  cut = [s[len(s) - k :] if tail else s[:k] for s, k, tail in zip(segments, keep, keep_tail)]
  return cut, keep != [len(s) for s in segments]


def _ids(segments, tokenizer: Tokenizer) -> list[int]:
  """<s> segment_0 $ segment_1 ... <e>."""
  ids = [tokenizer.start_id, *segments[0]]
  for segment in segments[1:]:
    ids += [tokenizer.delimiter_id, *segment]
  ids.append(tokenizer.extract_id)
  return ids


def _sequence(ids, length: int, pad_id: int):
  """`ids` padded to `length`: (tokens, extract_index, lm_mask)."""
  tokens = np.full(length, pad_id, np.int32)
  tokens[: len(ids)] = ids
  lm_mask = np.zeros(length, np.int32)
  lm_mask[1 : len(ids)] = 1
  return tokens, np.int32(len(ids) - 1), lm_mask


def encode_example(
  kind: str, example: Mapping, tokenizer: Tokenizer, max_len: int, length: int | None = None
) -> dict[str, np.ndarray]:
  """One example as model inputs: tokens, extract_index, lm_mask, label, valid, truncated.

  Sequences are padded to `length` tokens (None: max_len; 0: the longest of
  this example's sequences, no padding beyond what it needs).
  Over-long text is cut, never `<s>`, `$` or `<e>`: segments share the room
  longest first (see `share_budget`) and keep their beginning, except a
  multiple-choice context, which keeps its end (where a question sits, right
  before the answer). Similarity cuts A and B once, so both orders hold the same
  text. `truncated` is 1 when anything was cut; sum it over batches to report.
  """
  encode = tokenizer.encode
  if kind in ('classification', 'entailment'):
    segments, truncated = _fit(
      [encode(example[f]) for f in FIELDS[kind]], max_len, keep_tail=(False, False)
    )
    sequences = [segments]
  elif kind == 'similarity':
    (a, b), truncated = _fit(
      [encode(example['text_a']), encode(example['text_b'])], max_len, keep_tail=(False, False)
    )
    sequences = [[a, b], [b, a]]
  elif kind == 'multiple_choice':
    context = encode(example['context'])
    sequences, truncated = [], False
    for choice in example['choices']:
      segments, cut = _fit([context, encode(choice)], max_len, keep_tail=(True, False))
      sequences.append(segments)
      truncated |= cut
  else:
    check_kind(kind)
  ids = [_ids(segments, tokenizer) for segments in sequences]
  length = max_len if length is None else length or max(len(i) for i in ids)
  tokens, extract_index, lm_mask = (
    np.stack(parts) for parts in zip(*(_sequence(i, length, tokenizer.pad_id) for i in ids))
  )
  if kind in ('classification', 'entailment'):  # one sequence: no sequence axis
    tokens, extract_index, lm_mask = tokens[0], extract_index[0], lm_mask[0]
  label = np.asarray(example.get('label', -1))
  label = label.astype(np.float32 if np.issubdtype(label.dtype, np.floating) else np.int32)
  return {
    'tokens': tokens,
    'extract_index': extract_index,
    'lm_mask': lm_mask,
    'label': label,
    'valid': np.asarray(1, np.int32),
    'truncated': np.asarray(truncated, np.int32),
  }


def encode_examples(
  kind: str, examples: Iterable[Mapping], tokenizer: Tokenizer, max_len: int
) -> tuple[dict[str, np.ndarray], int]:
  """A batch (dict of stacked arrays) of `examples`, and how many of them were truncated."""
  encoded = [encode_example(kind, example, tokenizer, max_len) for example in examples]
  if not encoded:
    raise UserError('no examples to encode')
  batch = {key: np.stack([e[key] for e in encoded]) for key in encoded[0]}
  return batch, int(batch['truncated'].sum())


def task_loss(task_logits, labels, weights, regression: bool) -> jax.Array:
  """Mean cross-entropy over the outputs (or squared error of output 0, for regression)."""
  if regression:
    losses = jnp.square(task_logits[..., 0].astype(jnp.float32) - labels)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(
      task_logits.astype(jnp.float32), labels
    )
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def lm_loss(next_token_loss: Callable, hidden, tokens, lm_mask, weights) -> jax.Array:
  """Next-token loss on each sequence's `lm_mask` tokens: a mean per sequence, then over sequences.

  `hidden` holds the final hidden states (*tokens.shape, n_embd);
  `next_token_loss(hidden, targets, token_weights)` sums the weighted cross-entropy of their
  LM logits (`model.GPT.next_token_loss`, which makes them a chunk of positions at a time:
  at the paper's RACE recipe, 32 x 4 x 512 x 40,478, all of them at once would be 10.6 GB of
  float32 before the gradients). Padding positions are masked out of the loss.

  Per-sequence means weigh a short example like a long one, as the original
  release's fine-tuning code does. `weights` holds one weight per example.
  """
  length = tokens.shape[-1]
  hidden = hidden.reshape(-1, length, hidden.shape[-1])
  # Position t predicts token t + 1; the last position predicts nothing.
  targets = jnp.pad(tokens.reshape(-1, length)[:, 1:], ((0, 0), (0, 1)))
  mask = jnp.pad(lm_mask.reshape(-1, length)[:, 1:], ((0, 0), (0, 1))).astype(jnp.float32)
  # Every sequence of an example (2 orders, n choices) carries the example's weight.
  sequence_weights = jnp.broadcast_to(
    weights.reshape(weights.shape + (1,) * (tokens.ndim - 2)), tokens.shape[:-1]
  ).reshape(-1, 1)
  token_weights = (
    mask
    / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    * sequence_weights
    / jnp.maximum(sequence_weights.sum(), 1.0)
  )
  return next_token_loss(hidden, targets, token_weights)


def finetune_loss_fn(
  model, lm_coef: float = 0.5, regression: bool = False, lm_chunk: int = 128
) -> Callable:
  """The paper's fine-tuning objective L_task + lm_coef * L_LM, as a Trainer loss_fn.

  `model` is a `model.GPTForTask`; batches are dicts from `encode_example`.
  Rows whose `valid` is 0 (padding of a last eval batch) count for nothing.
  lm_coef=0 skips the language-model logits altogether; `lm_chunk` positions
  per sequence get their logits at a time (0: all at once; see gpt_jax.lm_head).
  Returns loss_fn(params, batch, rng, deterministic) -> (loss, {'task_loss', 'lm_loss'}).
  """

  def loss_fn(params, batch, rng, deterministic):
    task_logits, hidden = model.apply(
      {'params': params},
      batch['tokens'],
      batch['extract_index'],
      deterministic=deterministic,
      rngs=None if deterministic else {'dropout': rng},
      method='task_logits_and_hidden',
    )
    weights = batch['valid'].astype(jnp.float32)
    loss = task_loss(task_logits, batch['label'], weights, regression)
    aux = {'task_loss': loss}
    if lm_coef > 0:
      aux['lm_loss'] = lm_loss(
        lambda *inputs: model.apply(
          {'params': params}, *inputs, lm_chunk, method='next_token_loss'
        ),
        hidden,
        batch['tokens'],
        batch['lm_mask'],
        weights,
      )
      loss = loss + lm_coef * aux['lm_loss']
    return loss, aux

  return loss_fn


def predict_fn(model) -> Callable:
  """(params, batch) -> task logits, without dropout or LM logits: jit it for evaluation."""

  def predict(params, batch):
    task_logits, _ = model.apply(
      {'params': params},
      batch['tokens'],
      batch['extract_index'],
      deterministic=True,
      with_lm_logits=False,
    )
    return task_logits

  return predict


def predictions(task_logits, regression: bool) -> np.ndarray:
  """Predicted class / choice index, or the regression score, per example."""
  task_logits = np.asarray(task_logits)
  return task_logits[..., 0] if regression else task_logits.argmax(-1)
