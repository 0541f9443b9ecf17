"""A 32-bit digest of every array of a pytree, computed where the arrays are.

The digest of an array is the wrapping uint32 sum of its elements' bits, each
word weighted by an odd multiplier from its flat position: any change of one
element changes it, and so does moving values between positions. It is one
jitted pass over the arrays on their own devices (sharded arrays reduce across
their shards), so a checkpoint's arrays are digested as they are saved and
again as they are restored, whatever mesh either side runs on. `start` only
dispatches that pass, so a save can fetch the results later, off the training
loop (`fetch`).
"""

import jax
import jax.numpy as jnp

_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _words(leaf: jax.Array) -> jax.Array:
  """The array's bits as unsigned words (a typed PRNG key: its key data)."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if leaf.dtype == jnp.bool_:
    leaf = leaf.astype(jnp.uint8)
  return jax.lax.bitcast_convert_type(leaf, _WORDS[leaf.dtype.itemsize]).astype(jnp.uint32)


def _digest(leaf: jax.Array) -> jax.Array:
  words = _words(leaf).reshape(-1)
  weights = jax.lax.iota(jnp.uint32, words.size) * jnp.uint32(2654435761) | jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


_digests = jax.jit(lambda tree: jax.tree.map(_digest, tree))


def _name(path) -> str:
  """'params/h_0/attn/c_attn/kernel': a leaf's path, the same for a dataclass and a dict."""
  return '/'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k)))) for k in path)


def start(tree):
  """The digests of `tree`'s arrays, a tree of device scalars still being computed."""
  return _digests(tree)


def fetch(started) -> dict[str, int]:
  """{path: digest} of the tree `start` returned, once the devices have computed it."""
  flat = jax.tree_util.tree_flatten_with_path(started)[0]
  values = jax.device_get([value for _, value in flat])
  return {_name(path): int(value) for (path, _), value in zip(flat, values)}


def digests(tree) -> dict[str, int]:
  """{path: digest} of every array leaf of `tree`."""
  return fetch(start(tree))


def mismatches(tree, expected: dict[str, int]) -> list[str]:
  """The paths of `tree`'s arrays whose digest is not the one in `expected`."""
  return [path for path, value in digests(tree).items() if expected.get(path) != value]
