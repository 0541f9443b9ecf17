"""GPT-1 (117M) pretraining on a TPU v5e-8 (8 chips, 16 GiB HBM each).

Exactly configs/gpt1_v4_8.py (the paper's recipe, bfloat16, data parallel):
each of the 8 chips holds the whole model and takes 8 of the 64 sequences.

    gpt-jax pretrain --config configs/gpt1_v5e_8.py --dry_run --topology v5e:2x4
"""

from gpt_jax.configs import gpt1_v4_8


def get_config():
  return gpt1_v4_8.get_config()
