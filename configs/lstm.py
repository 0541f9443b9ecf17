"""The paper's LSTM baseline (Radford et al. 2018, section 5): one layer of 2,048 units.

GPT-1's pretraining recipe and vocabulary, with the Transformer replaced by a single LSTM
layer under the same tied 768-wide token embedding: the 2,048-unit state is projected to
768 before the tied output layer. No position embeddings. 55,736,832 parameters (see
docs/lstm.md for the count).
"""

from gpt_jax.configs import gpt1


def get_config():
  config = gpt1.get_config()
  config.model.update(arch='lstm', lstm_units=2048)
  return config
