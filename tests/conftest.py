"""Test set-up: 8 fake CPU devices so every sharding test runs on a real (2, 2, 2) mesh."""

import os
import shutil
import tempfile

import pytest
import xla_env

# Must happen before JAX is imported anywhere.
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {xla_env.cpu_devices(8)}'.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole run, shared by this process, the xdist
# workers and every subprocess a test starts (the CLI runs, the multi-process runs): the same
# tiny programs compile once per run instead of once per process. It lives in a directory of
# its own, never in the user's ~/.cache (the environment variable wins over the config), and
# the controlling process removes it at the end. test_compile_cache sets its own.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='gpt_jax_test_jax_cache_')
  _OWN_COMPILE_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']
else:
  _OWN_COMPILE_CACHE = None


# The longest files, longest first (`--durations=0`, summed per file): started first, so that
# no worker picks one up near the end of the run and finishes it alone while the other has
# nothing left to do. Each worker takes the next file when it is done with one.
LONG_FILES = (
  'test_gcs_pod.py',
  'test_lease.py',
  'test_faults.py',
  'test_resume.py',
  'test_finetune.py',
  'test_flash_attention.py',
  'test_glue.py',
  'test_attention.py',
  'test_code_habits.py',
  'test_scan.py',
  'test_multiprocess.py',
  'test_packaging.py',
)


def pytest_collection_modifyitems(items):
  def rank(item) -> int:  # stable sort: each file's tests, and the other files, keep their order
    return LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES else len(LONG_FILES)

  items.sort(key=rank)


def pytest_unconfigure(config):
  if _OWN_COMPILE_CACHE and not hasattr(config, 'workerinput'):  # the controller, not a worker
    shutil.rmtree(_OWN_COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def gcs():
  """fake-gcs-server on 127.0.0.1 for the session; this process's GCS clients point at it."""
  from fake_gcs import FakeGcs

  server = FakeGcs()
  server.start()
  saved = {name: os.environ.get(name) for name in server.env}
  os.environ.update(server.env)
  yield server
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  server.stop()


@pytest.fixture(scope='session')
def random_lm(tmp_path_factory):
  """helpers.random_lm_dir, made once for the session (Hugging Face format, GPT-1 BPE)."""
  from helpers import random_lm_dir

  return random_lm_dir(tmp_path_factory.mktemp('random_lm') / 'model')
