"""Moving GPT-1 weights between gpt_jax, Hugging Face and the original OpenAI release.

Three formats hold the same numbers:
  * our parameter tree (`gpt_jax.model.GPT`), kernels shaped for tensor
    parallelism, e.g. c_attn (embed, 3, heads, head_dim);
  * Hugging Face's `OpenAIGPTLMHeadModel` state dict (in memory, or a directory
    with config.json + model.safetensors / pytorch_model.bin), whose Conv1D
    weights are (in, out) like our kernels, so converting only reshapes;
  * OpenAI's 2018 release (`params_shapes.json` + `params_0.npy` ...
    `params_9.npy`): one flat float32 vector cut into ten files, holding the
    position embeddings, the token embeddings, then each block's twelve arrays.

`_LAYOUT` is the one table between the names; import, export and the release
reader all walk it. Every importer returns `(params, ModelConfig)` with params
as host numpy float32 arrays (the trainer shards them onto devices), in the
unrolled block layout (gpt_jax.weights converts for nn.scan); export takes
either layout (gpt_jax.layer_layout).
"""

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax.linen import meta

from gpt_jax import layer_layout
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig

SAFETENSORS_FILE = 'model.safetensors'
PYTORCH_FILE = 'pytorch_model.bin'
CONFIG_FILE = 'config.json'

_HF_MODEL_TYPE = 'openai-gpt'
_HF_PREFIX = 'transformer.'

# (Hugging Face name, our path, how many leading dims of our array HF merges
# into its first axis; 0 = HF stores it flat). Listed in the order of the
# original release: positions, tokens, then each block's parameters.
_EMBEDDINGS = (
  ('positions_embed.weight', 'positions_embed/embedding', 1),
  ('tokens_embed.weight', 'tokens_embed/embedding', 1),
)
_BLOCK = (
  ('attn.c_attn.weight', 'attn/c_attn/kernel', 1),  # (embed, 3, heads, head_dim) = (768, 2304)
  ('attn.c_attn.bias', 'attn/c_attn/bias', 0),
  ('attn.c_proj.weight', 'attn/c_proj/kernel', 2),  # (heads, head_dim, embed) = (768, 768)
  ('attn.c_proj.bias', 'attn/c_proj/bias', 0),
  ('ln_1.weight', 'ln_1/scale', 0),
  ('ln_1.bias', 'ln_1/bias', 0),
  ('mlp.c_fc.weight', 'mlp/c_fc/kernel', 1),
  ('mlp.c_fc.bias', 'mlp/c_fc/bias', 0),
  ('mlp.c_proj.weight', 'mlp/c_proj/kernel', 1),
  ('mlp.c_proj.bias', 'mlp/c_proj/bias', 0),
  ('ln_2.weight', 'ln_2/scale', 0),
  ('ln_2.bias', 'ln_2/bias', 0),
)

# Entries of Hugging Face checkpoints that are not language-model weights: the
# tied output matrix (checked separately), buffers older checkpoints saved
# (causal mask, position ids) and task heads, which importing drops.
_NOT_WEIGHTS = re.compile(
  r'lm_head\.weight|position_ids|h\.\d+\.attn\.bias|multiple_choice_head\..*|score\..*'
)


def _layout(n_layer: int):
  """Yields (hf_name, our_path, merged_dims) for every parameter, in release order."""
  yield from _EMBEDDINGS
  for i in range(n_layer):
    for hf_name, path, merged in _BLOCK:
      yield f'h.{i}.{hf_name}', f'h_{i}/{path}', merged


def _hf_shape(shape: tuple[int, ...], merged_dims: int) -> tuple[int, ...]:
  head, tail = shape[:merged_dims], shape[merged_dims:]
  return ((int(np.prod(head)),) if head else ()) + (int(np.prod(tail)),)


def _our_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Shape of every parameter of the unrolled GPT(model_config), keyed by path; computes nothing."""
  model_config = dataclasses.replace(model_config, scan_layers=False)
  boxed = jax.eval_shape(
    lambda: GPT(model_config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  )
  flat = jax.tree_util.tree_flatten_with_path(meta.unbox(boxed))[0]
  return {'/'.join(k.key for k in path): leaf.shape for path, leaf in flat}


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split('/')
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def _get(tree, path: str):
  for key in path.split('/'):
    tree = tree[key]
  return tree


# ---------------------------------------------------------------- configs


def config_from_hf(hf_config) -> ModelConfig:
  """Our ModelConfig from a Hugging Face OpenAIGPTConfig or its config.json dict."""
  values = hf_config.to_dict() if hasattr(hf_config, 'to_dict') else dict(hf_config)
  model_type = values.get('model_type')
  if model_type != _HF_MODEL_TYPE:
    raise UserError(
      f'model_type is {model_type!r}, not {_HF_MODEL_TYPE!r}: only Hugging Face '
      'openai-gpt (GPT-1) models can be imported'
    )
  afn = values.get('afn', 'gelu')
  if afn != 'gelu':
    raise UserError(
      f"activation afn={afn!r} is not supported: gpt_jax implements GPT-1's "
      'tanh-approximated GELU (afn="gelu") only'
    )
  default = ModelConfig()
  n_embd = values.get('n_embd', default.n_embd)
  return ModelConfig.from_config(
    dict(
      vocab_size=values.get('vocab_size', default.vocab_size),
      n_ctx=values.get('n_positions', default.n_ctx),
      n_embd=n_embd,
      n_layer=values.get('n_layer', default.n_layer),
      n_head=values.get('n_head', default.n_head),
      d_ff=4 * n_embd,  # fixed in Hugging Face's MLP
      embd_pdrop=values.get('embd_pdrop', default.embd_pdrop),
      attn_pdrop=values.get('attn_pdrop', default.attn_pdrop),
      resid_pdrop=values.get('resid_pdrop', default.resid_pdrop),
      layer_norm_epsilon=values.get('layer_norm_epsilon', default.layer_norm_epsilon),
    )
  )


def config_to_hf(model_config: ModelConfig) -> dict:
  """The config.json of the Hugging Face OpenAIGPTLMHeadModel with our sizes."""
  if model_config.arch != 'transformer':
    raise UserError(
      f"a model.arch={model_config.arch} model cannot be exported: Hugging Face's "
      'OpenAIGPTLMHeadModel is the Transformer; sample and evaluate it with gpt-jax instead'
    )
  if model_config.d_ff != 4 * model_config.n_embd:
    raise UserError(
      f"model.d_ff={model_config.d_ff} cannot be exported: Hugging Face's "
      f'openai-gpt fixes it at 4 * n_embd = {4 * model_config.n_embd}'
    )
  return {
    'architectures': ['OpenAIGPTLMHeadModel'],
    'model_type': _HF_MODEL_TYPE,
    'vocab_size': model_config.vocab_size,
    'n_positions': model_config.n_ctx,
    'n_embd': model_config.n_embd,
    'n_layer': model_config.n_layer,
    'n_head': model_config.n_head,
    'afn': 'gelu',
    'embd_pdrop': model_config.embd_pdrop,
    'attn_pdrop': model_config.attn_pdrop,
    'resid_pdrop': model_config.resid_pdrop,
    'layer_norm_epsilon': model_config.layer_norm_epsilon,
    'initializer_range': 0.02,
    'tie_word_embeddings': True,
  }


# ---------------------------------------------------------------- import


def params_from_hf(source: Any, hf_config: Any = None) -> tuple[dict, ModelConfig]:
  """Converts Hugging Face openai-gpt weights into our parameter tree.

  Args:
    source: an `OpenAIGPTLMHeadModel` / `OpenAIGPTModel`, or its state dict
      (torch tensors or numpy arrays; keys with or without `transformer.`).
    hf_config: its OpenAIGPTConfig or config.json dict; taken from the model
      when `source` is one.

  Returns:
    (params, model_config).
  """
  if hasattr(source, 'state_dict'):
    hf_config = source.config if hf_config is None else hf_config
    source = source.state_dict()
  if hf_config is None:
    raise UserError('params_from_hf needs the Hugging Face config to go with a state dict')
  model_config = config_from_hf(hf_config)
  return _params_from_state(
    {k: _to_numpy(v) for k, v in source.items()}, model_config
  ), model_config


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor; .float() also covers bfloat16/float16
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _params_from_state(state: dict[str, np.ndarray], model_config: ModelConfig) -> dict:
  """Our params from HF-named numpy arrays, checking every name and shape."""
  original_names = {k.removeprefix(_HF_PREFIX): k for k in state}
  state = {k.removeprefix(_HF_PREFIX): v for k, v in state.items()}
  our_shapes = _our_shapes(model_config)
  params: dict = {}
  for hf_name, path, merged in _layout(model_config.n_layer):
    if hf_name not in state:
      raise UserError(
        f'weight {hf_name} is missing: the checkpoint is not an openai-gpt model '
        f'with n_layer={model_config.n_layer}'
      )
    array = state.pop(hf_name)
    expected = _hf_shape(our_shapes[path], merged)
    if array.shape != expected:
      raise UserError(
        f'weight {hf_name} has shape {array.shape}, but the config needs '
        f'{expected}; the config and weights do not belong together'
      )
    _set(params, path, array.reshape(our_shapes[path]))
  tied = state.get('lm_head.weight')
  if tied is not None and not np.array_equal(tied, params['tokens_embed']['embedding']):
    raise UserError(
      'lm_head.weight differs from tokens_embed.weight: GPT-1 ties its output '
      'layer to the token embedding, so this checkpoint cannot be represented'
    )
  unexpected = sorted(original_names[k] for k in state if not _NOT_WEIGHTS.fullmatch(k))
  if unexpected:
    raise UserError(
      f'unexpected weights {unexpected[:5]}: the checkpoint is not an openai-gpt '
      f'model with n_layer={model_config.n_layer}'
    )
  return params


def load_hf_dir(path) -> tuple[dict, ModelConfig]:
  """Reads a Hugging Face openai-gpt directory (local or in a bucket); returns
  (params, model_config).

  Weights come from model.safetensors, else from pytorch_model.bin, which is
  read with `torch.load(weights_only=True)`: plain tensors only, no code runs.
  """
  path = workdir_lib.path(path)
  if not path.is_dir():
    raise UserError(f'Hugging Face model directory {path} does not exist')
  config_file = path / CONFIG_FILE
  if not config_file.is_file():
    raise UserError(f'{config_file} is missing: {path} is not a Hugging Face model directory')
  try:
    hf_config = json.loads(config_file.read_text())
  except json.JSONDecodeError as error:
    raise UserError(f'{config_file} is not valid JSON ({error})') from None
  if (path / SAFETENSORS_FILE).is_file():
    state = _read_safetensors(path / SAFETENSORS_FILE)
  elif (path / PYTORCH_FILE).is_file():
    state = _read_pytorch_bin(path / PYTORCH_FILE)
  else:
    raise UserError(f'{path} has neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}')
  try:
    return params_from_hf(state, hf_config)
  except UserError as error:
    raise UserError(f'{path}: {error}') from None


def _read_safetensors(file: epath.Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open
  from safetensors.numpy import load

  try:
    if not workdir_lib.is_local(file):  # safe_open memory-maps local files only
      return load(file.read_bytes())
    with safe_open(str(file), framework='np') as f:
      return {key: f.get_tensor(key) for key in f.keys()}
  except (SafetensorError, OSError, KeyError) as error:  # KeyError: a dtype numpy lacks
    raise UserError(f'cannot read {file}: {error}') from None


def _read_pytorch_bin(file: epath.Path) -> dict:
  try:
    import torch
  except ImportError:
    raise UserError(
      f'reading {file} needs PyTorch (pip install torch); or convert the '
      f'directory to {SAFETENSORS_FILE}'
    ) from None
  try:
    state = torch.load(
      file if workdir_lib.is_local(file) else io.BytesIO(file.read_bytes()),
      map_location='cpu',
      weights_only=True,
    )
  except Exception as error:  # pickle refusals come as several exception types
    raise UserError(
      f'cannot read {file} as a plain tensor state dict ({error}); '
      'arbitrary pickled code is never loaded'
    ) from None
  if not isinstance(state, dict):
    raise UserError(f'{file} holds a {type(state).__name__}, not a state dict')
  return state


# ---------------------------------------------------------------- export


def state_to_hf(params, model_config: ModelConfig) -> dict[str, np.ndarray]:
  """The OpenAIGPTLMHeadModel state dict (float32 numpy, lm_head tied so omitted).

  `params` may be in either block layout, whatever model_config.scan_layers says.
  """
  params = layer_layout.convert(jax.device_get(meta.unbox(params)), scanned=False)
  our_shapes = _our_shapes(model_config)
  names = set(our_shapes)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  given = {'/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat}
  if given != names:
    raise UserError(
      f'params do not match the model config: missing {sorted(names - given)[:5]}, '
      f"unexpected {sorted(given - names)[:5]}; pass the GPT decoder's params"
    )
  state = {}
  for hf_name, path, merged in _layout(model_config.n_layer):
    array = np.asarray(_get(params, path), np.float32)
    if array.shape != our_shapes[path]:
      raise UserError(
        f'parameter {path} has shape {array.shape}, but the model config needs {our_shapes[path]}'
      )
    state[_HF_PREFIX + hf_name] = np.ascontiguousarray(
      array.reshape(_hf_shape(array.shape, merged))
    )
  return state


def export_hf_dir(params, model_config: ModelConfig, out_dir, tokenizer=None) -> epath.Path:
  """Writes config.json + model.safetensors (+ the tokenizer) for Hugging Face.

  `transformers.OpenAIGPTLMHeadModel.from_pretrained(out_dir)` loads the result,
  and with a `tokenizer` (any gpt_jax tokenizer) `AutoTokenizer.from_pretrained`
  too: tokenizer.json + tokenizer_config.json, plus our sentencepiece
  tokenizer.model when that is what it is. Files are written to a temporary
  local directory first. A local `out_dir` is that directory renamed into
  place; a bucket's gets the files copied in with config.json last, which is
  what makes it a model directory: a failure never leaves a loadable
  half-written `out_dir`.
  """
  from safetensors.numpy import save_file

  from gpt_jax.data import hf_tokenizer

  out_dir = workdir_lib.path(out_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise UserError(
      f'export directory {out_dir} already exists and is not empty; '
      'choose another path or remove it'
    )
  hf_config = config_to_hf(model_config)
  state = state_to_hf(params, model_config)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  staging = epath.Path(
    tempfile.mkdtemp(
      prefix=f'.{out_dir.name}.', dir=out_dir.parent if workdir_lib.is_local(out_dir) else None
    )
  )
  try:
    save_file(state, str(staging / SAFETENSORS_FILE), metadata={'format': 'pt'})
    if tokenizer is not None:
      if not isinstance(tokenizer, hf_tokenizer.HFTokenizer):  # sentencepiece: keep the original
        tokenizer.model_path.copy(staging / workdir_lib.TOKENIZER_FILE)  # workdir: maybe gs://
      hf_tokenizer.write_for_hf(tokenizer, staging)
    (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + '\n')
    if workdir_lib.is_local(out_dir):
      os.chmod(staging, 0o755)  # mkdtemp makes it private to the user
      if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
      os.replace(staging, out_dir)
    else:
      names = sorted(p.name for p in staging.iterdir() if p.name != CONFIG_FILE)
      for name in [*names, CONFIG_FILE]:  # config.json last
        (staging / name).copy(out_dir / name)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out_dir


# ---------------------------------------------------------------- original release


def _load_npy(file: epath.Path) -> np.ndarray:
  with file.open('rb') as f:
    return np.load(f, allow_pickle=False)


def load_openai_release(
  source: str | Path, *, n_ctx: int | None = None, n_head: int = 12
) -> tuple[dict, ModelConfig]:
  """Reads OpenAI's original GPT-1 release (finetune-transformer-lm/model/).

  The ten `params_{i}.npy` files concatenate into one vector that
  `params_shapes.json` cuts into: position embeddings [512, 768], token
  embeddings [40478, 768], then per block c_attn w [1, 768, 2304] and b,
  c_proj w [1, 768, 768] and b, ln_1 g and b, c_fc w [1, 768, 3072] and b,
  c_proj w [1, 3072, 768] and b, ln_2 g and b. The original code then built
  one matrix [tokens; special-token rows; positions[:n_ctx]]; we keep the
  tokens and positions as our two embeddings (gpt_jax.weights adds the
  special-token rows).

  Args:
    source: directory holding params_shapes.json and params_0.npy ... params_9.npy.
    n_ctx: positions to keep (None: all the release's, 512).
    n_head: attention heads (not recorded in the files; 12 for GPT-1).

  Returns:
    (params, model_config).
  """
  path = workdir_lib.path(source)
  if not path.is_dir():
    raise UserError(f'OpenAI release directory {path} does not exist')
  files = [path / 'params_shapes.json'] + [path / f'params_{i}.npy' for i in range(10)]
  missing = [f.name for f in files if not f.is_file()]
  if missing:
    raise UserError(f'{path} is not an OpenAI GPT release: missing {", ".join(missing)}')
  shapes = [tuple(s) for s in json.loads(files[0].read_text())]
  n_layer, extra = divmod(len(shapes) - len(_EMBEDDINGS), len(_BLOCK))
  if extra or n_layer < 1 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
    raise UserError(
      f'{files[0]} lists {len(shapes)} arrays; an OpenAI GPT release has 2 '
      f'embeddings + {len(_BLOCK)} per block'
    )
  (n_positions, n_embd), (vocab_size, _) = shapes[0], shapes[1]
  n_ctx = n_positions if n_ctx is None else n_ctx
  if not 0 < n_ctx <= n_positions:
    raise UserError(f"n_ctx={n_ctx} must be between 1 and the release's {n_positions} positions")

  flat = np.concatenate([_load_npy(f).reshape(-1) for f in files[1:]])
  sizes = [int(np.prod(s)) for s in shapes]
  if flat.size != sum(sizes):
    raise UserError(
      f'the params_*.npy files hold {flat.size} numbers but params_shapes.json needs {sum(sizes)}'
    )
  arrays = [a.reshape(s) for a, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]

  model_config = ModelConfig.from_config(
    dict(
      vocab_size=vocab_size,
      n_ctx=n_ctx,
      n_embd=n_embd,
      n_layer=n_layer,
      n_head=n_head,
      d_ff=4 * n_embd,
    )
  )
  state = {}
  for (hf_name, _, _), array in zip(_layout(n_layer), arrays):
    if array.ndim == 3 and array.shape[0] == 1:  # TF conv1d weights are [1, in, out]
      array = array[0]
    state[hf_name] = array.astype(np.float32)
  state['positions_embed.weight'] = state['positions_embed.weight'][:n_ctx]
  try:
    return _params_from_state(state, model_config), model_config
  except UserError as error:
    raise UserError(f'{path}: {error}') from None
