"""GPT-1 (117M) pretraining on a TPU v4-8 (4 chips, 32 GiB HBM each).

The paper's recipe unchanged (global batch 64 x 512, Adam 2.5e-4, 2,000 warmup
steps, cosine decay); two changes for the hardware:
- model.dtype='bfloat16': activations and matmuls in bfloat16, the MXU's
  native format. Parameters, Adam moments and the loss stay float32.
- mesh data=-1, fsdp=1: plain data parallelism. The parameters and Adam state
  (1.9 GB) fit on every chip many times over, and one gradient all-reduce per
  step is cheaper than gathering sharded weights for every layer.

Check it before paying for the slice (per-chip memory, FLOPs, fit):
    gpt-jax pretrain --config configs/gpt1_v4_8.py --dry_run --topology v4:2x2x1
"""

from gpt_jax.configs import gpt1


def get_config():
  config = gpt1.get_config()
  config.model.dtype = 'bfloat16'
  # The LM head without waste (gpt_jax.lm_head): the vocabulary padded to the MXU's 128
  # inside the step, the loss's float32 logits made 128 positions per sequence at a time.
  config.model.update(pad_vocab_to=128, lm_chunk=128)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config
