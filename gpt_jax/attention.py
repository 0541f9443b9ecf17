"""The attention kernels behind `model.attention`.

Every implementation maps query, key and value of shape (batch, length,
heads, head_dim) to the attention output of the same shape, with GPT-1's
scaling by 1/sqrt(head_dim):

- 'xla' (the reference): the einsums, mask, softmax and attention-probability
  dropout written out in jax.numpy, causal attention in blocks of queries that
  skip the fully masked scores. Runs everywhere.
- 'dot_product_attention': jax.nn.dot_product_attention, asked for cuDNN's
  fused flash-attention kernel when compiling for an NVIDIA GPU in bfloat16 or
  float16 (what cuDNN supports; JAX's own default is XLA on every backend),
  and for XLA's attention elsewhere.
- 'splash': the Pallas splash-attention kernel for TPUs (causal mask, blocks
  of 128), never materialising the (length, length) scores.
- 'flash': our own Pallas flash-attention kernel (gpt_jax/flash_attention.py)
  for TPUs and NVIDIA GPUs, interpreted on a CPU, with the attention-probability
  dropout inside it: the masks the 'xla' path draws.
- 'auto': 'flash' when compiling for a TPU or GPU and the kernel serves the
  shape, else 'xla'.

'dot_product_attention' and 'splash' have no attention-probability dropout:
training them with model.attn_pdrop > 0 is refused. Decoding through the
key/value cache passes an explicit mask; there the fused kernels give way to
XLA (their blocks do not fit one query against a cache, and cuDNN's fully
masked padding rows are not defined), which reads the cache once per token
either way.
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax import flash_attention as flash
from gpt_jax.dropout import PieceDropout
from gpt_jax.errors import UserError

IMPLEMENTATIONS = ('auto', 'xla', 'dot_product_attention', 'splash', 'flash')
SPLASH_BLOCK = 128  # splash tiles the sequence in blocks of this many tokens
CAUSAL_BLOCK = 128  # queries per block of the 'xla' causal attention


def check_implementation(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise UserError(
      f'unknown model.attention={name!r}; expected one of: {", ".join(IMPLEMENTATIONS)}'
    )


def check_shape(implementation: str, length: int, head_dim: int, heads: int) -> None:
  """Refuses, before any work, a shape the chosen kernel cannot serve ('auto' always can)."""
  problem = flash.unsupported(length, head_dim, heads) if implementation == 'flash' else None
  if problem:
    raise UserError(problem)


def attend(
  implementation: str, query, key, value, mask=None, dropout: PieceDropout | None = None
) -> jax.Array:
  """Attention output (batch, q_len, heads, head_dim).

  mask: None for causal self-attention over equal query and key lengths, or a
  boolean array broadcastable to (batch, heads, q_len, kv_len), True where a
  query may attend (the key/value cache). dropout: applied to the attention
  probabilities, or None when it would do nothing (evaluation, rate 0).
  """
  check_implementation(implementation)
  if implementation == 'auto':
    implementation = _automatic(query, mask, dropout)
  if implementation == 'xla' or (implementation == 'flash' and mask is not None):
    return xla_attention(query, key, value, mask, dropout)
  if implementation == 'flash':
    return flash_attention(query, key, value, dropout)
  if dropout is not None:
    raise UserError(
      f'model.attention={implementation!r} has no attention-probability dropout; '
      'set model.attn_pdrop=0 or use model.attention=xla'
    )
  if implementation == 'dot_product_attention':
    use_cudnn = (
      mask is None
      and _target_platform() in ('gpu', 'cuda')
      and query.dtype in (jnp.bfloat16, jnp.float16)
    )
    return jax.nn.dot_product_attention(
      query,
      key,
      value,
      mask=mask,
      is_causal=mask is None,
      implementation='cudnn' if use_cudnn else 'xla',
    )
  if mask is not None:
    return xla_attention(query, key, value, mask, None)
  return splash_attention(query, key, value)


def xla_attention(query, key, value, mask=None, dropout: Callable | None = None) -> jax.Array:
  """The reference: softmax(q k^T / sqrt(d) masked) v, probabilities in float32.

  Causal self-attention (mask None) runs its queries in blocks of
  CAUSAL_BLOCK, each against the keys up to its last query only: the score
  blocks above the diagonal, every entry masked, are never computed. At length
  512 that skips 6 of the 16 blocks of 128 × 128 scores — their matmuls,
  softmax and dropout, forward and backward. The result is the unblocked
  attention's (masked entries weigh exactly 0 there), dropout masks included,
  up to float rounding in the softmax's sums.
  """
  if mask is not None:
    return _attend_block(query, key, value, mask, dropout, first_query=0)
  length = query.shape[1]
  outputs = []
  for start in range(0, length, CAUSAL_BLOCK):
    end = min(start + CAUSAL_BLOCK, length)
    causal = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
    outputs.append(
      _attend_block(
        query[:, start:end], key[:, :end], value[:, :end], causal, dropout, first_query=start
      )
    )
  return jnp.concatenate(outputs, axis=1)  # of one block: XLA emits no copy


def _attend_block(query, key, value, mask, dropout, first_query: int):
  """Attention of a block of queries, the first of them query `first_query` of the whole."""
  scores = jnp.einsum('bqhd,bkhd->bhqk', query, key) / math.sqrt(query.shape[-1])
  scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
  if dropout is not None:
    probs = dropout(probs, (0, 0, first_query, 0))
  return jnp.einsum('bhqk,bkhd->bqhd', probs, value)


def _automatic(query, mask, dropout: PieceDropout | None) -> str:
  """'flash' where it runs compiled and serves the shape, else 'xla'."""
  if mask is not None or _target_platform() not in ('tpu', 'gpu', 'cuda', 'rocm'):
    return 'xla'
  _, length, heads, head_dim = query.shape
  if flash.unsupported(length, head_dim, heads) or _unsupported_dropout(query, dropout):
    return 'xla'
  return 'flash'


def _target_platform() -> str:
  """The platform being compiled for: the mesh's devices' (a TPU slice in a dry run from a CPU
  host) when a mesh is set, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def _splash_per_shard(query, key, value, interpret: bool = False):
  """Splash attention on one device's (batch, heads, length, head_dim) shard."""
  # Imported here: the Pallas TPU modules are only needed (and only work) for TPUs.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

  heads, length = query.shape[1], query.shape[2]
  mask = masks.MultiHeadMask([masks.CausalMask((length, length))] * heads)
  block = min(512, length)  # the largest of 128, 256, 512 that divides the length
  while length % block:
    block //= 2
  sizes = kernel.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  splash = kernel.make_splash_mha(
    mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )
  # The kernel does not scale the scores; scaling the queries is the same product.
  return jax.vmap(splash)(query / math.sqrt(query.shape[-1]), key, value)


def splash_attention(query, key, value, interpret: bool = False) -> jax.Array:
  """Causal splash attention, each device running the kernel on its own batch and heads.

  Under a mesh (every Trainer step) the mesh's devices say what the program
  is compiled for — a TPU slice in a dry run from a CPU host — and any other
  platform is refused here. Without one (abstract shape evaluation, a bare
  model.apply) nothing is known yet, and Pallas refuses to lower for a CPU
  unless `interpret` runs the kernel in Pallas's interpreter (for checking).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and _target_platform() != 'tpu':
    raise UserError(
      f"model.attention='splash' is a TPU kernel and this program compiles for "
      f'{_target_platform()}; use model.attention=xla or dot_product_attention'
    )
  length = query.shape[1]
  if length % SPLASH_BLOCK:
    raise UserError(
      f"model.attention='splash' needs a sequence length that is a multiple of "
      f'{SPLASH_BLOCK}; got {length}'
    )
  return _on_each_device(
    lambda q, k, v, _: _splash_per_shard(q, k, v, interpret), query, key, value
  )


def _on_each_device(per_shard: Callable, query, key, value, *replicated):
  """per_shard(q, k, v, *replicated, shard_start) on each device's (batch, heads, length,
  head_dim) shard, shard_start being (first batch row, first head) of the shard in the whole.

  A Pallas kernel is one opaque call that XLA cannot split: under a mesh,
  shard_map hands each device its own batch rows and heads, as the activations
  are laid out. Takes and returns (batch, length, heads, head_dim).
  """
  to_heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
  query, key, value = map(to_heads_first, (query, key, value))
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return to_heads_first(per_shard(query, key, value, *replicated, (0, 0)))
  spec = nn.logical_to_mesh_axes(('activation_batch', 'activation_heads', None, None))
  assert spec is not None  # the rules map every logical axis name
  # A dimension its mesh axes do not divide (a batch of one at initialisation) stays whole.
  spec = jax.P(
    *(
      axes if size % math.prod(mesh.shape[a] for a in _axis_names(axes)) == 0 else None
      for axes, size in zip(spec, query.shape)
    )
  )

  def on_shard(query, key, value, *replicated):
    start = tuple(_shard_index(mesh, axes) * size for axes, size in zip(spec, query.shape))
    return per_shard(query, key, value, *replicated, start)

  out = jax.shard_map(
    on_shard,
    mesh=mesh,
    in_specs=(spec,) * 3 + (jax.P(),) * len(replicated),
    out_specs=spec,
    check_vma=False,
  )(query, key, value, *replicated)
  return to_heads_first(out)


def _shard_index(mesh, axes) -> jax.Array | int:
  """This device's shard number along a dimension split over mesh `axes` (major first)."""
  index = 0
  for axis in _axis_names(axes):
    index = index * mesh.shape[axis] + jax.lax.axis_index(axis)
  return index


def _axis_names(axes) -> tuple[str, ...]:
  """The mesh axes of one entry of a PartitionSpec."""
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _unsupported_dropout(query, dropout: PieceDropout | None) -> str | None:
  if dropout is None or dropout.keep_prob == 0.0:
    return None
  return flash.unsupported_dropout(_flash_plan(query, dropout), dropout.key)


def _flash_plan(query, dropout: PieceDropout | None) -> flash.Plan:
  platform = _target_platform()
  batch, length, heads, head_dim = query.shape
  return flash.Plan(
    batch,
    heads,
    length,
    head_dim,
    keep_prob=1.0 if dropout is None else dropout.keep_prob,
    platform='gpu' if platform in ('cuda', 'rocm') else platform,
  )


def flash_attention(query, key, value, dropout: PieceDropout | None = None):
  """Causal attention through our Pallas kernel, the dropout (if any) inside it."""
  if dropout is not None and dropout.keep_prob == 0.0:
    return jnp.zeros_like(query)  # every probability dropped
  _, length, heads, head_dim = query.shape
  plan = _flash_plan(query, dropout)
  check_shape('flash', length, head_dim, heads)
  problem = _unsupported_dropout(query, dropout)
  if problem:
    raise UserError(problem)
  words = jnp.zeros(2, jnp.int32) if dropout is None else flash.key_words(dropout.key)
  if plan.platform == 'cpu' and not jax.sharding.get_abstract_mesh().empty:
    flash.say_interpreted()  # a run on the CPU, not the shapes-only tracing of a dry run

  def per_shard(query, key, value, words, start):
    scalars = jnp.concatenate([words, jnp.asarray(start, jnp.int32)])
    return flash.attention(plan, scalars, query, key, value)

  return _on_each_device(per_shard, query, key, value, words)
