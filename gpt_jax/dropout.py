"""Dropout whose random mask is cheap on every backend, CPU included.

Flax's nn.Dropout draws its mask with jax.random.bernoulli. On TPU and GPU
JAX lowers the Threefry-2x32 hash behind it to straight-line code that XLA
fuses into one pass; on CPU it lowers it as a rolled loop, so XLA makes about
thirty passes over a mask the size of the attention probabilities, a large
share of a CPU training step (the README's benchmark section has the numbers).
Here the same hash is written out in jax.numpy, which every backend fuses.

The counters are laid out as JAX's partitionable Threefry lays them out (the
default, jax_threefry_partitionable=True), so `Dropout` draws exactly the
masks nn.Dropout draws; tests/test_dropout.py holds it to that.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, bits: int):
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key0, key1, count0, count1) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled; uint32 in, two uint32 out."""
  keys = (key0, key1, key0 ^ key1 ^ _KEY_PARITY)
  x0, x1 = count0 + keys[0], count1 + keys[1]
  for injection in range(5):
    for bits in _ROTATIONS[injection % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, bits) ^ x0
    x0 = x0 + keys[(injection + 1) % 3]
    x1 = x1 + keys[(injection + 2) % 3] + np.uint32(injection + 1)
  return x0, x1


def random_bits(
  key: jax.Array,
  shape: tuple[int, ...],
  start: tuple[int, ...] | None = None,
  window: tuple[int, ...] | None = None,
) -> jax.Array:
  """uint32 random bits of `shape`: jax.random.bits(key, shape), computed without a loop.

  Each element hashes its row-major index, as JAX's partitionable Threefry
  does, so the result shards like any elementwise op. With `start` and
  `window`, only the bits of that window of the array (the elements from index
  `start`, `window` of them along each axis) are computed: the same bits the
  whole array has there. Falls back to JAX for 2**32 elements or more (the
  index then needs a second word) and for keys that are not Threefry keys.
  """
  start = start or (0,) * len(shape)
  window = window or shape
  if math.prod(shape) >= 2**32 or str(jax.random.key_impl(key)) != 'threefry2x32':
    return jax.random.bits(key, shape)[tuple(map(slice, start, np.add(start, window)))]
  key0, key1 = jax.random.key_data(key)
  # One iota per axis rather than a reshaped flat iota: each shards along its own axis.
  index = jnp.zeros(window, jnp.uint32)
  for axis in range(len(shape)):
    stride = np.uint32(math.prod(shape[axis + 1 :]))
    position = jax.lax.broadcasted_iota(jnp.uint32, window, axis) + np.uint32(start[axis])
    index = index + position * stride
  return bits_at(key0, key1, index)


def bits_at(key0, key1, index: jax.Array) -> jax.Array:
  """The uint32 random bits of the elements at row-major `index` (uint32) under the key's two
  words: plain integer ops, so a kernel can compute its own tile's bits."""
  bits0, bits1 = threefry2x32(key0, key1, jnp.zeros_like(index), index)
  return bits0 ^ bits1


def kept(bits: jax.Array, keep_prob: float) -> jax.Array:
  """Whether jax.random.bernoulli(key, keep_prob) keeps the element of these bits: True where
  the float32 uniform in [0, 1) built from their top 23 bits is below keep_prob."""
  mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)
  uniform = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0
  return uniform < jnp.float32(keep_prob)


def keep_mask(
  key: jax.Array,
  keep_prob: float,
  shape: tuple[int, ...],
  start: tuple[int, ...] | None = None,
  window: tuple[int, ...] | None = None,
) -> jax.Array:
  """jax.random.bernoulli(key, keep_prob, shape), by the same float32 construction (or its
  window, as in random_bits)."""
  return kept(random_bits(key, shape, start, window), keep_prob)


class Dropout(nn.Module):
  """nn.Dropout (same name, rng stream and masks) with the loop-free mask above."""

  rate: float

  def __call__(self, inputs, deterministic: bool):
    if self.rate == 0.0 or deterministic:
      return inputs
    return self.in_pieces(inputs.shape)(inputs, (0,) * inputs.ndim)

  def in_pieces(self, shape: tuple[int, ...]) -> 'PieceDropout':
    """Training-mode dropout of an array of `shape` that is computed in pieces, with the mask
    the whole array would get from __call__: one key is drawn for all pieces."""
    return PieceDropout(self.make_rng('dropout'), 1.0 - self.rate, shape)


@dataclasses.dataclass(frozen=True)
class PieceDropout:
  """Dropout of the pieces of an array of `shape`; a kernel reads the key and keep_prob to draw
  the same masks itself."""

  key: jax.Array
  keep_prob: float
  shape: tuple[int, ...]

  def __call__(self, piece: jax.Array, start: tuple[int, ...]) -> jax.Array:
    """The piece whose first element sits at index `start` of the whole array, dropped."""
    if self.keep_prob == 0.0:
      return jnp.zeros_like(piece)
    mask = keep_mask(self.key, self.keep_prob, self.shape, start, piece.shape)
    return jax.lax.select(mask, piece / self.keep_prob, jnp.zeros_like(piece))
