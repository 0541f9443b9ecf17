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

The fused kernels have no attention-probability dropout: training them with
model.attn_pdrop > 0 is refused. Decoding through the key/value cache passes
an explicit mask; there the fused kernels give way to XLA (splash's blocks
do not fit one query against a cache, and cuDNN's fully masked padding rows
are not defined), which reads the cache once per token either way.
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.errors import UserError

IMPLEMENTATIONS = ('xla', 'dot_product_attention', 'splash')
SPLASH_BLOCK = 128  # splash tiles the sequence in blocks of this many tokens
CAUSAL_BLOCK = 128  # queries per block of the 'xla' causal attention


def check_implementation(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise UserError(
      f'unknown model.attention={name!r}; expected one of: {", ".join(IMPLEMENTATIONS)}'
    )


def attend(
  implementation: str, query, key, value, mask=None, dropout: Callable | None = None
) -> jax.Array:
  """Attention output (batch, q_len, heads, head_dim).

  mask: None for causal self-attention over equal query and key lengths, or a
  boolean array broadcastable to (batch, heads, q_len, kv_len), True where a
  query may attend (the key/value cache). dropout: applied to the attention
  probabilities, or None when it would do nothing (evaluation, rate 0).
  """
  check_implementation(implementation)
  if implementation == 'xla':
    return xla_attention(query, key, value, mask, dropout)
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


def _target_platform() -> str:
  """The platform being compiled for: the mesh's devices' (a TPU slice in a dry run from a CPU
  host) when a mesh is set, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def _splash_per_shard(query, key, value):
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
  splash = kernel.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1)
  # The kernel does not scale the scores; scaling the queries is the same product.
  return jax.vmap(splash)(query / math.sqrt(query.shape[-1]), key, value)


def splash_attention(query, key, value) -> jax.Array:
  """Causal splash attention, each device running the kernel on its own batch and heads.

  Under a mesh (every Trainer step) the mesh's devices say what the program
  is compiled for — a TPU slice in a dry run from a CPU host — and any other
  platform is refused here. Without one (abstract shape evaluation, a bare
  model.apply) nothing is known yet, and Pallas refuses to lower for a CPU.
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
  to_heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
  query, key, value = map(to_heads_first, (query, key, value))
  if mesh.empty:
    return to_heads_first(_splash_per_shard(query, key, value))
  # The kernel is one opaque call that XLA cannot split: shard_map hands each
  # device its own batch rows and heads, as the activations are laid out.
  spec = nn.logical_to_mesh_axes(('activation_batch', 'activation_heads', None, None))
  out = jax.shard_map(
    _splash_per_shard, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False
  )(query, key, value)
  return to_heads_first(out)
