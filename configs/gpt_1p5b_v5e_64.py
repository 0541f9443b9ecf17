"""A 1.5B-parameter GPT-1 on a TPU v5e-64 slice (64 chips, 16 GiB HBM each).

GPT-1's architecture (post-LN blocks, learned positions, tied output, 512-token
context, its 40,478-entry vocabulary) at GPT-2 XL's size: 48 layers, 1600 wide,
25 heads of 64, 4 x 1600 feed-forward: 1.54B parameters. Changes from
configs/gpt1.py, and why:
- model sizes above; model.dtype='bfloat16' for the MXUs (parameters, Adam and
  the loss stay float32).
- model.scan_layers=True: the 48 blocks compile once as the body of a scan
  (compiling the unrolled step took 8.5 minutes and 11 GB of host RAM).
- model.remat='full': each block's activations are recomputed in the backward
  pass instead of stored, trading about a third more compute for memory.
- mesh fsdp=-1 (all 64 chips), ZeRO-3 style: float32 parameters, gradients and
  Adam moments (25 GB in all) are split 64 ways instead of copied to every chip.
- train.batch_size=256: 4 sequences of 512 per chip; the paper's 64 would leave
  each chip one. 131k tokens per step.
- optim.learning_rate=2e-4: GPT-3's value for its 1.3B model (Brown et al. 2020,
  table 2.1); larger models want a lower peak than GPT-1's 2.5e-4.

    gpt-jax pretrain --config configs/gpt_1p5b_v5e_64.py --dry_run --topology v5e:8x8
"""

from gpt_jax.configs import gpt1


def get_config():
  config = gpt1.get_config()
  config.model.update(
    n_layer=48, n_embd=1600, n_head=25, d_ff=6400, dtype='bfloat16', remat='full', scan_layers=True
  )
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  config.train.batch_size = 256
  config.optim.learning_rate = 2e-4
  return config
