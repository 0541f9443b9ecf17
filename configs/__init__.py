"""The shipped configs, importable as gpt_jax.configs (e.g. `from gpt_jax.configs import gpt1`)."""
