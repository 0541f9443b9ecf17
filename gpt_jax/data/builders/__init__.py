"""TFDS builders of our own corpora; importing this package registers them with TFDS."""

from gpt_jax.data.builders.local_text import LocalText
from gpt_jax.data.builders.stdlib_docs import StdlibDocs

__all__ = ['LocalText', 'StdlibDocs']
