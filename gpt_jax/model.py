"""The GPT-1 decoder (Radford et al. 2018) in Flax Linen.

Read top to bottom: attention, MLP, the post-LN block, then the model. Every
parameter carries logical axis names; `gpt_jax.sharding` maps them onto the
device mesh. Parameter names follow Hugging Face's `OpenAIGPTModel` so weights
move between the two without a renaming table.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gpt_jax import attention, lm_head
from gpt_jax.dropout import Dropout
from gpt_jax.errors import UserError
from gpt_jax.lstm import LSTM

# Remat policies by name: what a block saves from its forward pass for the backward
# pass. 'none' saves everything (no remat); 'full' saves only the block's input.
# The dots policies save matmul outputs (with_no_batch_dims: the projections, not the
# attention scores); save_qkv_mlp saves just the two widest projections, named below.
_POLICIES = {
  'full': None,
  'dots_saveable': jax.checkpoint_policies.dots_saveable,
  'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  'save_qkv_mlp': jax.checkpoint_policies.save_only_these_names('qkv', 'mlp_hidden'),
}
REMAT_POLICIES = ('none', *_POLICIES)

# The model families model.arch names: GPT-1's Transformer, and the paper's LSTM baseline
# (gpt_jax/lstm.py). `decoder` builds either.
ARCHITECTURES = ('transformer', 'lstm')

# GPT-1 initialises every weight from N(0, 0.02) and every bias to zero.
_weight_init = nn.initializers.normal(stddev=0.02)
_zeros = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and numerics of the decoder. Defaults are the paper's 117M model."""

  vocab_size: int = 40478
  n_ctx: int = 512
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  d_ff: int = 3072
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  dtype: str = 'float32'  # compute dtype of activations and matmuls
  param_dtype: str = 'float32'
  # What each block keeps for the backward pass (REMAT_POLICIES); the rest is recomputed.
  # Stored configs from before policies had a bool: True means 'full', False 'none'.
  remat: str = 'none'
  # Run the blocks under nn.scan: one compiled block, parameters stacked on a leading
  # 'layers' axis under `h` (see gpt_jax.layer_layout) instead of `h_0` ... `h_{n-1}`.
  scan_layers: bool = False
  attention: str = 'xla'  # the attention kernel: one of gpt_jax.attention.IMPLEMENTATIONS
  # The training loss pads the vocabulary to a multiple of this inside the computation (see
  # gpt_jax.lm_head); the parameters keep vocab_size rows. 1: no padding.
  pad_vocab_to: int = 1
  # Positions per sequence whose LM logits the pretraining loss makes at a time, with their
  # gradients in the same pass (see gpt_jax.lm_head); 0: all at once, left to autodiff.
  lm_chunk: int = 0
  # One of ARCHITECTURES. The LSTM reads vocab_size, n_ctx (the longest sequence), n_embd
  # (embedding width), lstm_units and the dropout rates; the block fields (n_head, d_ff,
  # attn_pdrop, layer_norm_epsilon, attention) do not apply to it and are ignored, and its
  # n_layer is 1 (finetune.n_transfer counts it as the one block).
  arch: str = 'transformer'
  lstm_units: int = 2048  # the LSTM's state width (the paper: one layer of 2,048 units)

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise UserError(
        f'model.arch={self.arch!r} is not a model family; use one of: {", ".join(ARCHITECTURES)}'
      )
    if self.arch == 'lstm':
      _check_lstm(self)
      object.__setattr__(self, 'n_layer', 1)
    if isinstance(self.remat, bool):
      object.__setattr__(self, 'remat', 'full' if self.remat else 'none')
    if self.remat not in REMAT_POLICIES:
      raise UserError(
        f'model.remat={self.remat!r} is not a remat policy; use one of: {", ".join(REMAT_POLICIES)}'
      )
    if self.pad_vocab_to < 1:
      raise UserError(f'model.pad_vocab_to={self.pad_vocab_to} must be >= 1 (1: no padding)')
    if self.lm_chunk < 0:
      raise UserError(f'model.lm_chunk={self.lm_chunk} must be >= 0 (0: all positions at once)')

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @classmethod
  def from_config(cls, config) -> 'ModelConfig':
    """Builds from an ml_collections ConfigDict (or any mapping) of the same fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(config)
    unknown = sorted(set(values) - fields)
    if unknown:
      raise UserError(f'unknown model config field(s) {unknown}; known: {sorted(fields)}')
    model_config = cls(**values)
    if model_config.arch == 'lstm':
      return model_config  # no attention: its kernel and head count are not read
    attention.check_implementation(model_config.attention)
    if model_config.n_embd % model_config.n_head:
      raise UserError(
        f'model.n_embd={model_config.n_embd} is not divisible by model.n_head={model_config.n_head}'
      )
    return model_config


def _check_lstm(config: ModelConfig) -> None:
  """One line for the Transformer-only options that would change what an LSTM run does."""
  if config.lstm_units < 1:
    raise UserError(f'model.lstm_units={config.lstm_units} must be >= 1')
  if config.remat != 'none' or config.scan_layers:
    raise UserError(
      'model.remat and model.scan_layers apply to Transformer blocks; the LSTM has none: '
      "drop them (remat='none', scan_layers=False) with model.arch=lstm"
    )


def _partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=config.layer_norm_epsilon,  # 1e-5 as in GPT-1; Flax's default is 1e-6
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    scale_init=_partitioned(nn.initializers.ones, ('embed',)),
    bias_init=_partitioned(_zeros, ('embed',)),
    name=name,
  )


class Linear(nn.Module):
  """y = x @ kernel + bias, contracting the trailing dims of x with the kernel's leading ones.

  Our own instead of nn.DenseGeneral so a multi-dimensional kernel such as
  (embed, 3, heads, head_dim) is created, and logically annotated, in its
  final shape.
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  axis_names: tuple[str, ...]  # logical names of the kernel's dims: in_shape + out_shape
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      'kernel',
      _partitioned(_weight_init, self.axis_names),
      self.in_shape + self.out_shape,
      self.param_dtype,
    )
    bias = self.param(
      'bias',
      _partitioned(_zeros, self.axis_names[len(self.in_shape) :]),
      self.out_shape,
      self.param_dtype,
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contract = len(self.in_shape)
    # The leading (batch, length) dims flattened into one: the weight gradient then
    # contracts a single dimension, which XLA's CPU dot takes as it is; contracting
    # (batch, length) it first copies the output gradient into a transposed layout.
    leading = x.shape[: x.ndim - contract]
    x = x.reshape(-1, *self.in_shape)
    y = jax.lax.dot_general(
      x, kernel, ((tuple(range(1, contract + 1)), tuple(range(contract))), ((), ()))
    )
    return y.reshape(*leading, *self.out_shape) + bias


class KeyValueCache(nn.Module):
  """The keys and values of every token decoded so far, in the 'cache' collection.

  Slots are shared by the batch: each call writes its n new tokens at slots
  [index, index + n) of every row. Rows of different lengths are left-padded,
  so `cache_mask` (batch, cache_len) marks the padding slots that no query may
  attend. The first call creates the cache, sized by `cache_mask`.
  """

  @nn.compact
  def __call__(self, key, value, cache_mask):
    batch, length, heads, head_dim = key.shape
    shape = (batch, cache_mask.shape[1], heads, head_dim)
    axes = ('activation_batch', 'activation_length', 'activation_heads', None)
    keys = self.variable('cache', 'key', jnp.zeros, shape, key.dtype)
    values = self.variable('cache', 'value', jnp.zeros, shape, value.dtype)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    start = index.value
    keys.value = nn.with_logical_constraint(
      jax.lax.dynamic_update_slice(keys.value, key, (0, start, 0, 0)), axes
    )
    values.value = nn.with_logical_constraint(
      jax.lax.dynamic_update_slice(values.value, value, (0, start, 0, 0)), axes
    )
    index.value = start + length
    # Query i sits at slot start + i: it sees real tokens at that slot or before.
    slots = jnp.arange(cache_mask.shape[1])
    causal = slots[None, :] <= start + jnp.arange(length)[:, None]
    return keys.value, values.value, causal[None, None] & cache_mask[:, None, None, :]


class CausalSelfAttention(nn.Module):
  """Multi-head attention with a fused [q | k | v] projection and a causal mask.

  With a `cache_mask` (decoding, see `GPT.decode`) the keys and values also go
  to a KeyValueCache, and queries attend to everything cached so far. The
  attention itself is `config.attention`'s kernel (gpt_jax/attention.py).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool, cache_mask=None):
    cfg = self.config
    d, heads, head_dim = cfg.n_embd, cfg.n_head, cfg.head_dim
    # One kernel for q, k and v, kept as (embed, 3, heads, head_dim) so tensor
    # parallelism splits whole heads; flattened it is GPT-1's (768, 2304).
    qkv = Linear(
      (d,),
      (3, heads, head_dim),
      ('embed', 'qkv', 'heads', 'head_dim'),
      cfg.dtype,
      cfg.param_dtype,
      name='c_attn',
    )(x)
    qkv = nn.with_logical_constraint(
      qkv, ('activation_batch', 'activation_length', None, 'activation_heads', None)
    )
    qkv = checkpoint_name(qkv, 'qkv')  # kept by the save_qkv_mlp remat policy
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    mask = None  # causal over the tokens of this call
    if cache_mask is not None:
      key, value, mask = KeyValueCache(name='kv_cache')(key, value, cache_mask)
    # Created before the residual dropout, which keeps the name (and masks) Dropout_1.
    attn_dropout = Dropout(cfg.attn_pdrop)
    dropout = None
    if not deterministic and cfg.attn_pdrop > 0:
      # The probabilities may be computed in blocks of queries (see attention.py).
      dropout = attn_dropout.in_pieces((x.shape[0], heads, query.shape[1], key.shape[1]))
    out = attention.attend(cfg.attention, query, key, value, mask, dropout)

    out = Linear(
      (heads, head_dim),
      (d,),
      ('heads', 'head_dim', 'embed'),
      cfg.dtype,
      cfg.param_dtype,
      name='c_proj',
    )(out)
    return Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)


class MLP(nn.Module):
  """Position-wise feed-forward network with tanh-approximated GELU."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    h = Linear(
      (cfg.n_embd,), (cfg.d_ff,), ('embed', 'mlp'), cfg.dtype, cfg.param_dtype, name='c_fc'
    )(x)
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_length', 'activation_mlp'))
    h = checkpoint_name(h, 'mlp_hidden')  # kept by the save_qkv_mlp remat policy
    h = nn.gelu(h, approximate=True)
    h = Linear(
      (cfg.d_ff,), (cfg.n_embd,), ('mlp', 'embed'), cfg.dtype, cfg.param_dtype, name='c_proj'
    )(h)
    return Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)


class Block(nn.Module):
  """Post-LN Transformer block: n = LN(x + attn(x)); h = LN(n + mlp(n))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool, cache_mask=None):
    x = _layer_norm(self.config, 'ln_1')(
      x + CausalSelfAttention(self.config, name='attn')(x, deterministic, cache_mask)
    )
    x = _layer_norm(self.config, 'ln_2')(x + MLP(self.config, name='mlp')(x, deterministic))
    return nn.with_logical_constraint(
      x, ('activation_batch', 'activation_length', 'activation_embed')
    )


class _ScanStep(Block):
  """A Block with nn.scan's (carry, output) signature: the hidden state is the carry."""

  @nn.compact
  def __call__(self, x, deterministic: bool, cache_mask=None):
    return super().__call__(x, deterministic, cache_mask), None


def _blocks(cfg: ModelConfig):
  """The n_layer blocks: a list of Blocks, or one scanned module with stacked variables."""
  block = _ScanStep if cfg.scan_layers else Block
  if cfg.remat != 'none':
    # static_argnums counts `self`: argument 2 is `deterministic`. Under scan the
    # loop body already keeps XLA from merging the recomputation away.
    block = nn.remat(
      block, static_argnums=(2,), policy=_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
    )
  if not cfg.scan_layers:
    return [block(cfg, name=f'h_{i}') for i in range(cfg.n_layer)]
  return nn.scan(
    block,
    length=cfg.n_layer,
    variable_axes={'params': 0, 'cache': 0},
    split_rngs={'params': True, 'dropout': True},
    in_axes=(nn.broadcast, nn.broadcast),  # deterministic, cache_mask
    metadata_params={nn.PARTITION_NAME: 'layers'},
  )(cfg, name='h')


class GPT(nn.Module):
  """GPT-1: token + learned position embeddings, n_layer post-LN blocks, tied output.

  There is no final LayerNorm: the last block already ends in one.
  """

  config: ModelConfig

  def setup(self) -> None:
    cfg = self.config
    self.tokens_embed = nn.Embed(
      cfg.vocab_size,
      cfg.n_embd,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=_partitioned(_weight_init, ('vocab', 'embed')),
    )
    self.positions_embed = nn.Embed(
      cfg.n_ctx,
      cfg.n_embd,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=_partitioned(_weight_init, ('position', 'embed')),
    )
    self.drop = Dropout(cfg.embd_pdrop)
    self.h = _blocks(cfg)

  def _run_blocks(self, x, deterministic: bool, cache_mask=None):
    if self.config.scan_layers:
      return self.h(x, deterministic, cache_mask)[0]
    for block in self.h:
      x = block(x, deterministic, cache_mask)
    return x

  def hidden_states(self, tokens, deterministic: bool = True) -> jax.Array:
    """Final hidden states (batch, length, n_embd) of the last block."""
    length = tokens.shape[1]
    if length > self.config.n_ctx:
      raise UserError(
        f'sequence length {length} exceeds the model context model.n_ctx={self.config.n_ctx}'
      )
    x = self.tokens_embed(tokens) + self.positions_embed(jnp.arange(length))[None]
    x = nn.with_logical_constraint(x, ('activation_batch', 'activation_length', 'activation_embed'))
    x = self.drop(x, deterministic=deterministic)
    return self._run_blocks(x, deterministic)

  def logits(self, hidden) -> jax.Array:
    """Language-model logits through the transposed token embedding, in float32."""
    # Flattened to (tokens, n_embd) for the embedding's gradient, as in Linear.
    logits = self.tokens_embed.attend(hidden.reshape(-1, hidden.shape[-1]))
    return logits.reshape(*hidden.shape[:-1], -1).astype(jnp.float32)

  def __call__(self, tokens, deterministic: bool = True):
    return self.logits(self.hidden_states(tokens, deterministic))

  def next_token_loss(self, hidden, targets, weights, chunk: int) -> jax.Array:
    """sum(weights * cross-entropy of `targets`) over the LM logits of hidden states
    (sequences, length, n_embd), `chunk` positions at a time; see gpt_jax.lm_head."""
    cfg = self.config
    return lm_head.next_token_loss(
      hidden, self.tokens_embed.embedding, targets, weights, cfg.pad_vocab_to, chunk, cfg.dtype
    )

  def decode(self, tokens, positions, cache_mask) -> jax.Array:
    """Logits (batch, vocab) after the last of `tokens`, attending through the key/value cache.

    Apply with mutable=['cache']: each call appends tokens (batch, n) at their
    absolute positions (batch, n) to the cache that earlier calls filled (the
    prompt, then one token per step), so nothing is recomputed. cache_mask
    (batch, cache_len) is False at padding slots; see KeyValueCache.
    """
    x = self.tokens_embed(tokens) + self.positions_embed(positions)
    x = nn.with_logical_constraint(x, ('activation_batch', 'activation_length', 'activation_embed'))
    return self.logits(self._run_blocks(x, True, cache_mask)[:, -1])


def decoder(config: ModelConfig) -> GPT | LSTM:
  """The language model `config.arch` names: GPT-1's Transformer or the LSTM baseline.

  Both have the same methods (hidden_states, logits, next_token_loss, decode); training,
  fine-tuning, scoring and sampling build their model here.
  """
  return LSTM(config) if config.arch == 'lstm' else GPT(config)


# How GPTForTask reads the sequences of one example (gpt_jax.tasks maps task kinds onto these):
#   single    tokens (batch, len): one sequence -> (batch, num_outputs)
#   pair_sum  tokens (batch, 2, len): two sequences whose <e> states are added, then one linear
#             layer -> (batch, num_outputs); the paper's similarity tasks (both orders)
#   choices   tokens (batch, n, len): one scalar per sequence -> (batch, n); multiple choice
HEAD_LAYOUTS = ('single', 'pair_sum', 'choices')


class GPTForTask(nn.Module):
  """The decoder with a linear head on each sequence's final hidden state at `<e>`.

  `layout` is one of HEAD_LAYOUTS; extract_index holds the `<e>` position of
  each sequence (tokens.shape[:-1]). Also returns the LM logits
  (*tokens.shape, vocab) for the auxiliary loss, or None when `with_lm_logits`
  is False.

  Parameters: {'transformer': the GPT decoder's, named exactly as in
  pretraining, 'classifier': {'kernel' (embed, classes), 'bias' (classes,)}}.
  """

  config: ModelConfig
  layout: str
  num_outputs: int = 1  # classes; 1 for regression and for choices
  clf_pdrop: float = 0.1  # dropout on the <e> state before the linear layer

  def setup(self) -> None:
    if self.layout not in HEAD_LAYOUTS:
      raise UserError(
        f'unknown head layout {self.layout!r}; expected one of: {", ".join(HEAD_LAYOUTS)}'
      )
    if self.layout == 'choices' and self.num_outputs != 1:
      raise UserError(
        f'a choices head scores each choice with one output; got num_outputs={self.num_outputs}'
      )
    cfg = self.config
    self.transformer = decoder(cfg)  # either family, under one name in the parameter tree
    self.clf_drop = Dropout(self.clf_pdrop)
    self.classifier = Linear(
      (cfg.n_embd,), (self.num_outputs,), ('embed', 'classes'), cfg.dtype, cfg.param_dtype
    )

  def __call__(
    self, tokens, extract_index, deterministic: bool = True, with_lm_logits: bool = True
  ):
    logits, hidden = self.task_logits_and_hidden(tokens, extract_index, deterministic)
    return logits, self.lm_logits(hidden) if with_lm_logits else None

  def lm_logits(self, hidden) -> jax.Array:
    """Language-model logits (..., vocab) of final hidden states (..., n_embd)."""
    return self.transformer.logits(hidden)

  def next_token_loss(self, hidden, targets, weights, chunk: int) -> jax.Array:
    """The decoder's GPT.next_token_loss."""
    return self.transformer.next_token_loss(hidden, targets, weights, chunk)

  def task_logits_and_hidden(
    self, tokens, extract_index, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """The task head's logits, and the final hidden states (*tokens.shape, n_embd).

    For a loss that makes LM logits only a few positions at a time (see
    gpt_jax.tasks.transforms.lm_loss) instead of all of them at once.
    """
    sequence_axes = 0 if self.layout == 'single' else 1
    if tokens.ndim != 2 + sequence_axes or extract_index.shape != tokens.shape[:-1]:
      raise UserError(
        f'a {self.layout} head expects tokens of rank {2 + sequence_axes} and '
        f'one extract_index per sequence; got tokens {tokens.shape}, '
        f'extract_index {extract_index.shape}'
      )
    length = tokens.shape[-1]
    hidden = self.transformer.hidden_states(tokens.reshape(-1, length), deterministic)
    # A masked sum rather than a gather: exact, and it splits along the batch like
    # everything else (XLA's SPMD partitioner replicates a batched gather).
    at_extract = jnp.arange(length) == extract_index.reshape(-1, 1)
    state = jnp.where(at_extract[..., None], hidden, 0).sum(axis=1)
    state = state.reshape(*tokens.shape[:-1], hidden.shape[-1])
    if self.layout == 'pair_sum':
      state = state.sum(axis=1)  # <s> A $ B <e> + <s> B $ A <e>: symmetric in A and B
    if self.layout == 'choices':
      # One mask for all candidates of an example, as OpenAI's code draws it: the
      # candidates are compared through the same features.
      mask = self.clf_drop(jnp.ones_like(state[:, :1]), deterministic=deterministic)
      logits = self.classifier(state * mask)
    else:
      logits = self.classifier(self.clf_drop(state, deterministic=deterministic))
    logits = logits.astype(jnp.float32)
    if self.layout == 'choices':
      logits = logits[..., 0]  # one score per choice; the softmax runs over choices
    return logits, hidden.reshape(*tokens.shape, hidden.shape[-1])


def add_token_rows(params, n_new: int, rng: jax.Array, redraw=()) -> dict:
  """GPT parameters with `n_new` N(0, 0.02) rows appended to the token embedding and the
  rows of the ids in `redraw` drawn afresh from the same distribution.

  For the three fine-tuning tokens <s>, $ and <e>: weights whose vocabulary
  lacks them get new rows at the next ids, as in the paper; our own tokenizer
  reserves them, but pretraining never feeds them as inputs (Adam only pushes
  their rows around as softmax negatives), so fine-tuning re-draws them to
  start from the paper's fresh rows. One draw of shape (rows, embed) covers
  the re-drawn rows then the appended ones, in id order. Takes and returns the
  decoder's unboxed parameter tree (tokens_embed at its top).
  """
  embedding = params['tokens_embed']['embedding']
  vocab_size = embedding.shape[0]
  redraw = sorted({int(i) for i in redraw})
  if redraw and not 0 <= redraw[0] <= redraw[-1] < vocab_size:
    raise UserError(f'token ids {redraw} to re-draw lie outside the vocabulary of {vocab_size}')
  rows = _weight_init(rng, (len(redraw) + n_new, embedding.shape[1]), embedding.dtype)
  embedding = jnp.concatenate([embedding, rows[len(redraw) :]], axis=0)
  if redraw:
    embedding = embedding.at[jnp.asarray(redraw)].set(rows[: len(redraw)])
  return {**params, 'tokens_embed': {**params['tokens_embed'], 'embedding': embedding}}
