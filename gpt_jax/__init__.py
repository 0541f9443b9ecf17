"""gpt_jax: the original GPT (Radford et al. 2018) in JAX/Flax, from a laptop CPU to a TPU pod."""

__version__ = '0.1.0'
