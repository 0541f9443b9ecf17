"""Test set-up: 8 fake CPU devices so every sharding test runs on a real (2, 2, 2) mesh."""

import os

import pytest

# Must happen before JAX is imported anywhere.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The CLI turns on the persistent compilation cache in ~/.cache; tests keep out of it
# (the environment variable wins over the config; '' is off). test_compile_cache sets its own.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '')


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
