"""gpt_jax: the original GPT (Radford et al. 2018) in JAX/Flax, from a laptop CPU to a TPU pod."""

from gpt_jax import errors as _errors
from gpt_jax import storage as _storage

__version__ = '0.1.0'

try:
  _storage.configure()  # timeouts for every storage request, before the first one
except _errors.UserError:
  pass  # a bad GPT_JAX_STORAGE_TIMEOUT_S: the command reports it in one line when it starts
