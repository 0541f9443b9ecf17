"""One loader for every source of weights: -> (params, ModelConfig, tokenizer).

A source is a directory of one of these kinds, told apart by the files it holds:
  * a gpt_jax pretraining or fine-tuning workdir (checkpoints/ + its tokenizer):
    its newest readable checkpoint's decoder (a task head is dropped);
  * a Hugging Face openai-gpt directory (config.json + model.safetensors or
    pytorch_model.bin), e.g. written by `gpt-jax export` or as published;
  * OpenAI's original release (params_shapes.json + params_0.npy ... params_9.npy);
or a Hugging Face hub id, `hf:openai-community/openai-gpt`, read from the local
hub cache (downloaded first unless HF_HUB_OFFLINE is set).

The tokenizer is whichever the directory holds (`gpt_jax.data.hf_tokenizer.
tokenizer_in`): our sentencepiece tokenizer.model, a tokenizer.json, or GPT-1's
BPE tables (vocab.json + merges.txt, or the release's encoder_bpe_40000.json +
vocab_40000.bpe).

Fine-tuning, sampling and export all load through `load_weights`, so each kind
is recognised, and its model shape derived, in exactly one place.
"""

import dataclasses

import jax
import jax.numpy as jnp
from etils import epath

from gpt_jax import hf, layer_layout
from gpt_jax import workdir as workdir_lib
from gpt_jax.data.hf_tokenizer import tokenizer_in
from gpt_jax.data.tokenizer import TextTokenizer
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig, add_token_rows


@dataclasses.dataclass
class Weights:
  """A decoder's parameters (host arrays), its shape, and the tokenizer its ids belong to."""

  params: dict | None  # None: the shape and tokenizer only (finetune.random_init)
  model_config: ModelConfig
  tokenizer: TextTokenizer | None
  source: str  # what they were read from, for logs and summaries

  def text_tokenizer(self) -> TextTokenizer:
    """The tokenizer, for callers that read or write text."""
    if self.tokenizer is None:  # load_weights(tokenizer_required=False) found none
      raise UserError(f'{self.source} has no tokenizer, and reading text needs one')
    return self.tokenizer


LSTM_MARKER = 'recurrent_kernel'  # a parameter only the LSTM baseline has


def source_kind(directory) -> str:
  """'hf', 'openai' or 'workdir': which kind of weights `directory` holds."""
  if (directory / hf.CONFIG_FILE).is_file():
    return 'hf'
  if (directory / 'params_shapes.json').is_file():
    return 'openai'
  if (directory / workdir_lib.CHECKPOINTS_DIR).is_dir():
    return 'workdir'
  raise UserError(
    f'{directory} holds no weights gpt_jax can read: expected a gpt_jax workdir '
    f'({workdir_lib.CHECKPOINTS_DIR}/), a Hugging Face openai-gpt directory '
    f"({hf.CONFIG_FILE} + weights) or OpenAI's release (params_shapes.json + "
    'params_*.npy)'
  )


def config_from_params(params, n_ctx: int = ModelConfig.n_ctx) -> ModelConfig:
  """The decoder's sizes, read off its parameter shapes.

  Not from a stored config: a fine-tuning run takes its model shape from the
  weights it started from and adds fine-tuning tokens to the vocabulary, so
  its config's model section need not match. The block layout is kept:
  stacked parameters run with scanned blocks. The family too: an LSTM's
  parameters (gpt_jax.lstm) give model.arch='lstm'; having no position
  embeddings, it takes its context `n_ctx` from the caller.
  """
  vocab_size, n_embd = params['tokens_embed']['embedding'].shape
  if LSTM_MARKER in params:
    units = params[LSTM_MARKER].shape[0]
    return ModelConfig(
      vocab_size=vocab_size, n_ctx=n_ctx, n_embd=n_embd, arch='lstm', lstm_units=units
    )
  scanned = layer_layout.is_scanned(params)
  block = params[layer_layout.SCANNED] if scanned else params['h_0']
  layers = int(scanned)  # the leading 'layers' axis of stacked kernels
  return ModelConfig(
    vocab_size=vocab_size,
    n_ctx=params['positions_embed']['embedding'].shape[0],
    n_embd=n_embd,
    n_layer=layer_layout.num_layers(params),
    n_head=block['attn']['c_attn']['kernel'].shape[layers + 2],
    d_ff=block['mlp']['c_fc']['kernel'].shape[layers + 1],
    scan_layers=scanned,
  )


def _read(directory, kind: str, step: int | None = None) -> tuple[dict, ModelConfig]:
  if kind == 'hf':
    return hf.load_hf_dir(directory)
  if kind == 'openai':
    return hf.load_openai_release(directory)
  from gpt_jax import checkpoint  # orbax: only needed for workdirs

  params = checkpoint.load_params(directory, step=step)
  params = params.get('transformer', params)  # fine-tuning: {'transformer', 'classifier'}
  if LSTM_MARKER in params:  # the context an LSTM was trained with is in its config only
    return params, config_from_params(params, checkpoint.load_config(directory).model.n_ctx)
  return params, config_from_params(params)


HUB_PREFIX = 'hf:'


def hub_snapshot(repo_id: str) -> str:
  """The local directory of a hub model's newest cached snapshot (downloading it if allowed)."""
  import huggingface_hub
  from huggingface_hub.errors import LocalEntryNotFoundError

  try:
    return huggingface_hub.snapshot_download(repo_id, local_files_only=True)
  except LocalEntryNotFoundError:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
      raise UserError(
        f'{HUB_PREFIX}{repo_id} is not in the Hugging Face cache '
        f'({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: '
        f'run `hf download {repo_id}` where there is internet, or set '
        'HF_HUB_CACHE to a cache that holds it'
      ) from None
  try:
    return huggingface_hub.snapshot_download(repo_id)
  except Exception as error:  # no network, no such repo, no access: all one message
    raise UserError(
      f'cannot download {HUB_PREFIX}{repo_id} ({type(error).__name__}); check the '
      'id, or put it in the Hugging Face cache (HF_HUB_CACHE)'
    ) from None


def resolve_source(source, flag: str = 'source') -> epath.Path:
  """The directory `source` names: a path, a gs:// URL, or hf:ORG/NAME from the hub cache."""
  if str(source).startswith(HUB_PREFIX):
    return workdir_lib.path(hub_snapshot(str(source)[len(HUB_PREFIX) :]))
  directory = workdir_lib.path(source)  # a workdir may be in a bucket
  if not directory.is_dir():
    raise UserError(
      f'{flag}={source} is not a directory: pass a gpt_jax workdir, a Hugging '
      "Face openai-gpt directory, OpenAI's GPT release or hf:ORG/NAME"
    )
  return directory


def check_vocabulary(tokenizer: TextTokenizer, model_config: ModelConfig, where) -> None:
  """Fails when text can produce ids the embedding has no row for."""
  if tokenizer.text_vocab_size > model_config.vocab_size:
    raise UserError(
      f'{where}: the tokenizer ({tokenizer.model_path.name}) has '
      f'{tokenizer.text_vocab_size:,} tokens but the embedding has '
      f'{model_config.vocab_size:,} rows; they do not belong together'
    )


def load_weights(
  source, *, tokenizer_required: bool = True, flag: str = 'source', step: int | None = None
) -> Weights:
  """The decoder weights, shape and tokenizer held by `source` (see the module docstring).

  `flag` names where the user gave `source` (e.g. 'finetune.init'), for errors; `step`
  picks a workdir's checkpoint (default: its newest readable one).
  """
  directory = resolve_source(source, flag)
  kind = source_kind(directory)
  tokenizer = tokenizer_in(directory)
  if tokenizer is None and tokenizer_required:
    raise UserError(
      f'{directory} has no tokenizer: the one the model was trained with is '
      f'needed to read text ({workdir_lib.TOKENIZER_FILE}, tokenizer.json, or '
      'vocab.json + merges.txt; gpt-jax writes it into every workdir and export)'
    )
  if step is not None and kind != 'workdir':
    raise UserError(
      f'--step {step} picks a checkpoint of a gpt_jax workdir; {directory} is not one'
    )
  params, model_config = _read(directory, kind, step)
  if tokenizer is not None:
    check_vocabulary(tokenizer, model_config, directory)
  described = {
    'hf': 'Hugging Face weights',
    'openai': "OpenAI's released weights",
    'workdir': 'checkpoint',
  }[kind]
  return Weights(params, model_config, tokenizer, f'{described} in {directory}')


def with_token_ids(weights: Weights, token_ids, seed: int, *, redraw=()) -> Weights:
  """`weights` grown so every id in `token_ids` has an embedding row, with the rows of `redraw`
  drawn afresh.

  For weights whose vocabulary lacks the fine-tuning tokens <s>, $ and <e>
  (e.g. OpenAI's 40,478 tokens): they get new N(0, 0.02) rows after the
  vocabulary, as in the paper. Ids in `redraw` that the vocabulary already
  holds (our own tokenizer reserves the three) get new N(0, 0.02) rows too
  (see model.add_token_rows). Seeded by `seed`.
  """
  vocab_size = weights.model_config.vocab_size
  needed = max(vocab_size, max(token_ids) + 1)
  redraw = [i for i in redraw if i < vocab_size]  # ids beyond it are new rows anyway
  if needed == vocab_size and not redraw:
    return weights
  params = add_token_rows(weights.params, needed - vocab_size, jax.random.key(seed), redraw)
  return dataclasses.replace(
    weights,
    params=params,
    model_config=dataclasses.replace(weights.model_config, vocab_size=needed),
  )


ALL_LAYERS = 'all'  # finetune.n_transfer's default: the embeddings and every block


def transfer_count(n_transfer, random_init: bool, n_layer: int) -> int:
  """finetune.n_transfer as a number of blocks, OpenAI's meaning: -1 nothing, 0 the embeddings
  only, K the embeddings and the first K blocks ('all': n_layer).

  finetune.random_init=True is n_transfer=-1; with any other n_transfer it is a contradiction.
  """
  text = str(n_transfer).strip()
  if text == ALL_LAYERS:
    count = -1 if random_init else n_layer
  else:
    count = int(text) if text.lstrip('-').isdigit() else n_layer + 1  # n_layer + 1: invalid
    if not -1 <= count <= n_layer:
      raise UserError(
        f'finetune.n_transfer={n_transfer!r}: use -1 (nothing), 0 (the embeddings), 1 to '
        f"{n_layer} (the embeddings and that many first blocks) or '{ALL_LAYERS}'"
      )
    if random_init and count != -1:
      raise UserError(
        f'finetune.random_init=True transfers nothing, but finetune.n_transfer={count}; '
        'drop one of the two (random_init is n_transfer=-1)'
      )
  return count


def transferred(pretrained: dict, fresh: dict, count: int) -> dict:
  """Decoder parameters: `pretrained`'s embeddings and first `count` blocks, `fresh`'s rest.

  Both trees are one decoder's, in the same block layout (stacked blocks are split on their
  leading 'layers' axis). `count` is a transfer_count; with n_layer it is `pretrained`.
  """
  if LSTM_MARKER in fresh:  # the LSTM is one block: the embedding, then the rest
    return {-1: fresh, 0: {**fresh, 'tokens_embed': pretrained['tokens_embed']}}.get(
      count, pretrained
    )
  has_blocks = layer_layout.SCANNED in fresh or 'h_0' in fresh
  n_layer = layer_layout.num_layers(fresh) if has_blocks else None
  if n_layer is None or count == n_layer:
    if count not in (-1, n_layer):
      raise UserError(
        f'finetune.n_transfer={count} counts Transformer blocks; this model has none '
        "(use -1 or 'all')"
      )
    return fresh if count == -1 else pretrained
  if count == -1:
    return fresh
  merged = dict(pretrained)  # the embeddings
  if layer_layout.is_scanned(fresh):
    merged[layer_layout.SCANNED] = jax.tree.map(
      lambda old, new: jnp.concatenate([jnp.asarray(old[:count], new.dtype), new[count:]]),
      pretrained[layer_layout.SCANNED],
      fresh[layer_layout.SCANNED],
    )
  else:
    merged.update({f'h_{i}': fresh[f'h_{i}'] for i in range(count, n_layer)})
  return merged
