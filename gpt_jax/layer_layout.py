"""The two layouts of the decoder's blocks, and the one conversion between them.

Unrolled (model.scan_layers=False): one subtree per block, `h_0` ... `h_{n-1}`,
named like Hugging Face's `h.0` ... Scanned (model.scan_layers=True): one
subtree `h`, every array of which has a leading `layers` axis of n_layer
(what nn.scan creates). The numbers are the same; `convert` moves any tree that
holds decoder parameters (params, Adam's moments, a TrainState, a fine-tuning
{'transformer': ...} tree) between the two, so Hugging Face import/export and
checkpoint restore accept either.

Leaves may be numpy arrays (stay on the host), jax arrays or tracers (jnp), or
jax.ShapeDtypeStructs (shapes only; a NamedSharding gets an unsharded leading
axis, as the 'layers' logical axis is).
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

SCANNED = 'h'
_UNROLLED = re.compile(r'h_(\d+)')


def _is_decoder(node) -> bool:
  """A dict of the decoder's parameters (or of something shaped like them) in either layout."""
  return (
    isinstance(node, Mapping)
    and 'tokens_embed' in node
    and (SCANNED in node or any(_UNROLLED.fullmatch(str(key)) for key in node))
  )


def _decoders(tree) -> list:
  return [node for node in jax.tree.leaves(tree, is_leaf=_is_decoder) if _is_decoder(node)]


def is_scanned(tree) -> bool:
  """True if the decoder parameters in `tree` are stacked under `h` (its first decoder dict)."""
  found = _decoders(tree)
  if not found:
    raise ValueError('no GPT decoder parameters (tokens_embed and h or h_0 ...) in the tree')
  return SCANNED in found[0]


def like(tree: Any, reference: Any) -> Any:
  """`tree` in the block layout of `reference`'s decoder; unchanged if either holds none."""
  found = _decoders(reference)
  return convert(tree, SCANNED in found[0]) if found and _decoders(tree) else tree


def num_layers(decoder_params) -> int:
  """n_layer of one decoder's parameters, in either layout."""
  if SCANNED in decoder_params:
    return jax.tree.leaves(decoder_params[SCANNED])[0].shape[0]
  return sum(bool(_UNROLLED.fullmatch(str(key))) for key in decoder_params)


def convert(tree: Any, scanned: bool) -> Any:
  """`tree` with every decoder's blocks in the scanned (True) or unrolled (False) layout."""

  def visit(node):
    if not _is_decoder(node) or (SCANNED in node) == scanned:
      return node
    return _stack(node) if scanned else _unstack(node)

  return jax.tree.map(visit, tree, is_leaf=_is_decoder)


def _stack(decoder: Mapping) -> dict:
  blocks = [decoder[f'h_{i}'] for i in range(num_layers(decoder))]
  rest = {k: v for k, v in decoder.items() if not _UNROLLED.fullmatch(str(k))}
  return {**rest, SCANNED: jax.tree.map(lambda *layers: _stack_leaves(layers), *blocks)}


def _unstack(decoder: Mapping) -> dict:
  n_layer = num_layers(decoder)
  rest = {k: v for k, v in decoder.items() if k != SCANNED}
  return {
    **rest,
    **{
      f'h_{i}': jax.tree.map(lambda x, i=i: _layer(x, i), decoder[SCANNED]) for i in range(n_layer)
    },
  }


def _stack_leaves(layers):
  first = layers[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(
      (len(layers), *first.shape), first.dtype, sharding=_with_leading_axis(first.sharding)
    )
  if all(isinstance(x, np.ndarray) for x in layers):
    return np.stack(layers)
  return jnp.stack(layers)


def _layer(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=_without_leading_axis(x.sharding))
  return x[i]


def _with_leading_axis(sharding):
  if not isinstance(sharding, NamedSharding):
    return sharding
  return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def _without_leading_axis(sharding):
  if not isinstance(sharding, NamedSharding):
    return sharding
  return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
