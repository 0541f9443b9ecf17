"""Test set-up: 8 fake CPU devices so every sharding test runs on a real (2, 2, 2) mesh."""

import os

# Must happen before JAX is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The CLI turns on the persistent compilation cache in ~/.cache; tests keep out of it
# (the environment variable wins over the config; '' is off). test_compile_cache sets its own.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '')

