"""Causal flash attention in Pallas, with GPT-1's attention-probability dropout inside the kernel.

One kernel design, lowered by Mosaic for TPUs and by Triton for NVIDIA GPUs
(and interpreted on a CPU, for checking). The sequence is cut into tiles of
BLOCK queries × BLOCK keys; each program of the grid owns one (batch, head,
tile) and loops over the tiles it needs, so the tiles above the causal diagonal
(every score masked) are never visited:

- forward: per query tile, the key tiles up to the diagonal, with an online
  softmax (float32 running maximum and sum). It writes the output and the
  logsumexp of each query's scores, nothing of size length².
- backward, recomputing the probabilities from that logsumexp: per query tile
  the key tiles up to the diagonal (dq), and per key tile the query tiles from
  the diagonal on (dk, dv; the tile is computed transposed, keys × queries, so
  the per-query statistics lie along its rows as they are stored).

Dropout acts on the normalised probabilities: out = Σ_k keep · p / keep_prob · v,
the softmax's normaliser summing every (undropped) probability. A tile computes
its own keep bits from the dropout key and the row-major index of each element
(batch, head, query, key) in the (batch, heads, length, length) probabilities,
with gpt_jax.dropout's integer hash: the bits the `xla` attention draws, in the
forward pass and again in both backward passes. No mask is ever stored.

Inputs are one device's shard, laid out (batch, heads, length, head_dim); the
scalars tell a shard where its batch rows and heads sit in the whole array.
"""

import dataclasses
import functools
import math
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from gpt_jax import dropout as dropout_bits

BLOCK = 128  # queries and keys per tile: TPU lanes, a power of two for Triton
HEAD_DIMS = (16, 32, 64, 128, 256)  # Triton's dots need powers of two from 16
_MASKED = float(jnp.finfo(jnp.float32).min)  # the score of a key after its query
_NT = (((1,), (1,)), ((), ()))  # a · bᵀ: contract both operands' last axes


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static shape of one attention call: the whole array's sizes (for the dropout index),
  the probability kept and the platform compiled for ('tpu', 'gpu', or 'cpu': interpreted)."""

  batch: int
  heads: int
  length: int
  head_dim: int
  keep_prob: float = 1.0  # 1.0: no dropout
  platform: str = 'cpu'

  @property
  def tiles(self) -> int:
    return self.length // BLOCK

  @property
  def scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)


def unsupported(length: int, head_dim: int, heads: int) -> str | None:
  """Why the kernel cannot serve this shape, in one line naming what would work, or None."""
  if head_dim not in HEAD_DIMS:
    width = head_dim * heads
    fits = [d for d in HEAD_DIMS if width % d == 0]
    fix = (
      f'model.n_head={width // min(fits, key=lambda d: abs(d - head_dim))}'
      if fits
      else f'a head dimension of {", ".join(map(str, HEAD_DIMS))}'
    )
    return (
      f"model.attention='flash' needs a head dimension (model.n_embd / model.n_head) of "
      f'{", ".join(map(str, HEAD_DIMS))}; got {head_dim}: use {fix} or model.attention=xla'
    )
  if length % BLOCK:
    return (
      f"model.attention='flash' tiles the sequence in blocks of {BLOCK} tokens; got length "
      f'{length}: use {-(-length // BLOCK) * BLOCK} (train.seq_len) or model.attention=xla'
    )
  return None


def unsupported_dropout(plan: Plan, key: jax.Array) -> str | None:
  """Why the kernel cannot draw this dropout's masks (gpt_jax.dropout's limits), or None."""
  if str(jax.random.key_impl(key)) != 'threefry2x32':
    return "model.attention='flash' draws dropout from threefry2x32 keys; use model.attention=xla"
  if plan.batch * plan.heads * plan.length**2 >= 2**32:
    return (
      f"model.attention='flash' indexes dropout in 32 bits: batch × heads × length² must stay "
      f'below 2**32; got {plan.batch} × {plan.heads} × {plan.length}²: halve train.batch_size '
      'per step or use model.attention=xla'
    )
  return None


def key_words(key: jax.Array) -> jax.Array:
  """The dropout key's two uint32 words as int32, the kernel's scalar type on every backend."""
  return lax.bitcast_convert_type(jax.random.key_data(key), jnp.int32)


def attention(plan: Plan, scalars: jax.Array, query, key, value) -> jax.Array:
  """Causal attention of one shard, (batch, heads, length, head_dim) in and out.

  scalars: int32 [key word 0, key word 1, first batch row, first head] of this shard in the
  whole (plan.batch, plan.heads) array; the key words are ignored without dropout.
  """
  return _attention(plan, scalars, query, key, value)


@functools.cache
def say_interpreted() -> None:
  """Says once that the kernel is interpreted (a CPU run), which is slow."""
  print(
    "gpt-jax: model.attention='flash' runs its Pallas kernel interpreted on the CPU: slow, for "
    'checking against model.attention=xla',
    file=sys.stderr,
  )


# --- the tile: positions, masked scores, keep bits (shared by every kernel and backend) ---


def _positions(q_tile, k_tile, transposed: bool) -> tuple[jax.Array, jax.Array]:
  """Query and key position of each element of a (queries × keys) tile, or (keys × queries)."""
  rows = lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 0)
  cols = lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 1)
  queries, keys = (cols, rows) if transposed else (rows, cols)
  return q_tile * BLOCK + queries, k_tile * BLOCK + keys


def _scores(plan: Plan, a, b, queries, keys) -> jax.Array:
  """a · bᵀ scaled, in float32, with the keys after their query masked."""
  scores = lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32) * plan.scale
  return jnp.where(keys <= queries, scores, _MASKED)


def _dropper(plan: Plan, scalars_ref) -> Callable:
  """drop(x, queries, keys): x with the elements the dropout drops set to 0 (not yet divided by
  keep_prob), for this program's batch row and head. Called at the kernel's top level, where
  program ids are read (the interpreter substitutes them there only)."""
  if plan.keep_prob == 1.0:
    return lambda x, queries, keys: x
  batch = pl.program_id(0) + scalars_ref[2]
  head = pl.program_id(1) + scalars_ref[3]
  first_row = (batch * plan.heads + head) * plan.length
  key_words = scalars_ref[0], scalars_ref[1]

  def drop(x, queries, keys):
    # The row-major index in (batch, heads, length, length); int32 wraps as uint32 would.
    index = (first_row + queries) * plan.length + keys
    key0, key1 = (lax.bitcast_convert_type(jnp.full(x.shape, w), jnp.uint32) for w in key_words)
    bits = dropout_bits.bits_at(key0, key1, lax.bitcast_convert_type(index, jnp.uint32))
    return jnp.where(dropout_bits.kept(bits, plan.keep_prob), x, 0.0)

  return drop


def _tile(ref, tile) -> jax.Array:
  """Tile number `tile` (BLOCK rows) of a whole-sequence block."""
  return ref[pl.ds(pl.multiple_of(tile * BLOCK, BLOCK), BLOCK), :]


# --- the three kernels ---


def _forward_kernel(plan: Plan, scalars_ref, q_ref, k_ref, v_ref, out_ref, lse_ref) -> None:
  q_tile, drop = pl.program_id(2), _dropper(plan, scalars_ref)
  query = q_ref[...]

  def visit(k_tile, carry):
    total, running_max, running_sum = carry
    value = _tile(v_ref, k_tile)
    queries, keys = _positions(q_tile, k_tile, transposed=False)
    scores = _scores(plan, query, _tile(k_ref, k_tile), queries, keys)
    new_max = jnp.maximum(running_max, scores.max(axis=1, keepdims=True))
    probs = jnp.exp(scores - new_max)
    rescale = jnp.exp(running_max - new_max)
    running_sum = rescale * running_sum + probs.sum(axis=1, keepdims=True)
    probs = drop(probs, queries, keys)
    update = jnp.dot(probs.astype(value.dtype), value, preferred_element_type=jnp.float32)
    return rescale * total + update, new_max, running_sum

  start = (
    jnp.zeros((BLOCK, plan.head_dim), jnp.float32),
    jnp.full((BLOCK, 1), _MASKED, jnp.float32),
    jnp.zeros((BLOCK, 1), jnp.float32),
  )
  total, running_max, running_sum = lax.fori_loop(0, q_tile + 1, visit, start)
  out_ref[...] = (total / (running_sum * plan.keep_prob)).astype(out_ref.dtype)
  lse_ref[...] = (running_max + jnp.log(running_sum)).reshape(1, BLOCK)


def _dq_kernel(
  plan: Plan, scalars_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref
) -> None:
  q_tile, drop = pl.program_id(2), _dropper(plan, scalars_ref)
  query, d_out = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...].reshape(BLOCK, 1), delta_ref[...].reshape(BLOCK, 1)

  def visit(k_tile, dq):
    key = _tile(k_ref, k_tile)
    queries, keys = _positions(q_tile, k_tile, transposed=False)
    probs = jnp.exp(_scores(plan, query, key, queries, keys) - lse)
    d_probs = lax.dot_general(d_out, _tile(v_ref, k_tile), _NT, preferred_element_type=jnp.float32)
    d_scores = probs * (drop(d_probs, queries, keys) / plan.keep_prob - delta)
    return dq + jnp.dot(d_scores.astype(key.dtype), key, preferred_element_type=jnp.float32)

  dq = lax.fori_loop(0, q_tile + 1, visit, jnp.zeros((BLOCK, plan.head_dim), jnp.float32))
  dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def _dkdv_kernel(
  plan: Plan, scalars_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref
) -> None:
  k_tile, drop = pl.program_id(2), _dropper(plan, scalars_ref)
  key, value = k_ref[...], v_ref[...]

  def visit(q_tile, carry):
    dk, dv = carry
    query, d_out = _tile(q_ref, q_tile), _tile(do_ref, q_tile)
    queries, keys = _positions(q_tile, k_tile, transposed=True)  # keys × queries
    probs = jnp.exp(_scores(plan, key, query, queries, keys) - lse_ref[q_tile])
    kept = drop(probs, queries, keys) / plan.keep_prob
    dv = dv + jnp.dot(kept.astype(d_out.dtype), d_out, preferred_element_type=jnp.float32)
    d_probs = lax.dot_general(value, d_out, _NT, preferred_element_type=jnp.float32)
    d_scores = probs * (drop(d_probs, queries, keys) / plan.keep_prob - delta_ref[q_tile])
    dk = dk + jnp.dot(d_scores.astype(query.dtype), query, preferred_element_type=jnp.float32)
    return dk, dv

  zeros = jnp.zeros((BLOCK, plan.head_dim), jnp.float32)
  dk, dv = lax.fori_loop(k_tile, plan.tiles, visit, (zeros, zeros))
  dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# --- block specs and the calls: where the backends differ ---


def _specs(plan: Plan) -> dict[str, pl.BlockSpec]:
  """The blocks a program sees, by name; the grid is (batch, heads, tiles)."""
  tiled = lambda b, h, i: (b, h, i, 0)  # noqa: E731
  whole = lambda b, h, i: (b, h, 0, 0)  # noqa: E731
  specs = {
    'tile': pl.BlockSpec((None, None, BLOCK, plan.head_dim), tiled),
    'sequence': pl.BlockSpec((None, None, plan.length, plan.head_dim), whole),
    # Per-query statistics as (tiles, 1, BLOCK): a tile's row is (1, BLOCK), TPU-tileable.
    'stats_tile': pl.BlockSpec((None, None, None, 1, BLOCK), lambda b, h, i: (b, h, i, 0, 0)),
    'stats': pl.BlockSpec((None, None, plan.tiles, 1, BLOCK), lambda b, h, i: (b, h, 0, 0, 0)),
    'scalars': pl.BlockSpec((4,), lambda b, h, i: (0,)),
  }
  if plan.platform == 'tpu':
    specs['scalars'] = pl.BlockSpec(memory_space=pltpu.SMEM)
  return specs


def _pallas(plan: Plan, kernel, in_specs: list, out_specs: list, out_shape: list) -> Callable:
  params: pltpu.CompilerParams | pltriton.CompilerParams | None
  if plan.platform == 'tpu':
    params = pltpu.CompilerParams(dimension_semantics=('parallel', 'parallel', 'parallel'))
  elif plan.platform == 'gpu':
    params = pltriton.CompilerParams(num_warps=4, num_stages=2)
  else:
    params = None
  return pl.pallas_call(
    functools.partial(kernel, plan),
    grid=(out_shape[0].shape[0], out_shape[0].shape[1], plan.tiles),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=params,
    interpret=plan.platform == 'cpu',
    name=kernel.__name__.strip('_'),
  )


def _forward(plan: Plan, scalars, query, key, value) -> tuple[jax.Array, jax.Array]:
  specs = _specs(plan)
  batch, heads = query.shape[:2]
  return _pallas(
    plan,
    _forward_kernel,
    [specs['scalars'], specs['tile'], specs['sequence'], specs['sequence']],
    [specs['tile'], specs['stats_tile']],
    [
      jax.ShapeDtypeStruct(query.shape, query.dtype),
      jax.ShapeDtypeStruct((batch, heads, plan.tiles, 1, BLOCK), jnp.float32),
    ],
  )(scalars, query, key, value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan: Plan, scalars, query, key, value) -> jax.Array:
  return _forward(plan, scalars, query, key, value)[0]


def _attention_forward(plan: Plan, scalars, query, key, value) -> tuple[jax.Array, tuple]:
  out, lse = _forward(plan, scalars, query, key, value)
  return out, (scalars, query, key, value, out, lse)


def _attention_backward(plan: Plan, residuals: tuple, d_out) -> tuple:
  scalars, query, key, value, out, lse = residuals
  # Σ_k p·dp over a query's keys equals Σ_d out·d_out, dropout or not (out = dropped p · v).
  delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
  delta = delta.reshape(lse.shape)
  specs = _specs(plan)
  dq = _pallas(
    plan,
    _dq_kernel,
    [specs['scalars'], specs['tile'], specs['sequence'], specs['sequence'], specs['tile']]
    + [specs['stats_tile']] * 2,
    [specs['tile']],
    [jax.ShapeDtypeStruct(query.shape, query.dtype)],
  )(scalars, query, key, value, d_out, lse, delta)[0]
  dk, dv = _pallas(
    plan,
    _dkdv_kernel,
    [specs['scalars'], specs['sequence'], specs['tile'], specs['tile'], specs['sequence']]
    + [specs['stats']] * 2,
    [specs['tile']] * 2,
    [jax.ShapeDtypeStruct(key.shape, key.dtype), jax.ShapeDtypeStruct(value.shape, value.dtype)],
  )(scalars, query, key, value, d_out, lse, delta)
  return None, dq, dk, dv


_attention.defvjp(_attention_forward, _attention_backward)
