"""The LSTM baseline at configs/tiny.py's scale for smoke runs and tests: 256 units, 128 wide."""

from gpt_jax.configs import tiny


def get_config():
  config = tiny.get_config()
  config.model.update(arch='lstm', lstm_units=256)
  return config
