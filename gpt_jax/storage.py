"""Timeouts and retries for every request to object storage (gs://), set in one place.

Two clients talk to a bucket: gcsfs (through fsspec and etils.epath: token stores, indexes,
tokenizers, metrics, TensorBoard uploads, orbax's metadata files) and tensorstore (orbax's
array data). Left to their defaults, gcsfs waits for an answer forever and tensorstore
notices a stalled transfer only where JAX sets its low-speed limits (TPU VMs), so one
request that is never answered would hang the run. `configure()` gives both the same
stall timeout, `GPT_JAX_STORAGE_TIMEOUT_S` seconds (default 60):

- gcsfs: every request gives up when connecting, or waiting for the next bytes of an answer,
  takes longer than the timeout; gcsfs then retries it (6 tries, exponential back-off) as it
  retries a 429, a 5xx or a reset connection. A long transfer that keeps moving is never cut.
- tensorstore: `TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS` (the timeout) and
  `TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES` (256 bytes/s): a request slower than that for that
  long is aborted and retried (tensorstore's own retries, with back-off).

Values a user set already (those variables, or `requests_timeout` in fsspec's configuration)
win. `import gpt_jax` calls `configure()`, so every process (each host of a pod, each data
worker) has it before its first request.
"""

import math
import os

from gpt_jax.errors import UserError

TIMEOUT_ENV = 'GPT_JAX_STORAGE_TIMEOUT_S'
DEFAULT_TIMEOUT_S = 60.0
LOW_SPEED_LIMIT_BYTES = 256  # bytes/s, JAX's value on TPU VMs
TENSORSTORE_TIME_ENV = 'TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS'
TENSORSTORE_LIMIT_ENV = 'TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES'
_FSSPEC_PROTOCOLS = ('gs', 'gcs')  # gcsfs's names in fsspec's configuration


def timeout_s() -> float:
  """The stall timeout in seconds: GPT_JAX_STORAGE_TIMEOUT_S, or 60."""
  text = os.environ.get(TIMEOUT_ENV, '').strip()
  if not text:
    return DEFAULT_TIMEOUT_S
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not (math.isfinite(value) and value > 0):
    raise UserError(
      f'{TIMEOUT_ENV}={text!r}: give the storage request timeout in seconds, a number above 0 '
      f'(unset: {DEFAULT_TIMEOUT_S:g})'
    )
  return value


def configure() -> None:
  """Sets the timeout for gcsfs and tensorstore in this process, keeping values a user set.

  Call before the first request (filesystems gcsfs made before keep their settings).
  """
  seconds = timeout_s()
  os.environ.setdefault(TENSORSTORE_TIME_ENV, str(max(1, math.ceil(seconds))))
  os.environ.setdefault(TENSORSTORE_LIMIT_ENV, str(LOW_SPEED_LIMIT_BYTES))
  try:
    import aiohttp  # gcsfs's HTTP client, installed with it (the tpu and test extras)
  except ImportError:
    return  # no gcsfs here, so no gcsfs request to time out
  import fsspec.config

  conf = fsspec.config.conf
  if not any('requests_timeout' in conf.get(name, {}) for name in _FSSPEC_PROTOCOLS):
    # Per read, not in total: a stalled answer fails (aiohttp's SocketTimeoutError, which
    # gcsfs retries), a long download that keeps moving does not.
    conf.setdefault('gs', {})['requests_timeout'] = aiohttp.ClientTimeout(
      total=None, sock_connect=seconds, sock_read=seconds
    )
