"""GPT-1 in PyTorch with scaled_dot_product_attention, the torch side of accelerator_throughput.

The same forward pass as Hugging Face's OpenAIGPTLMHeadModel (post-LN blocks, tanh GELU,
learned positions, tied output, dropout on embeddings, attention probabilities and both
residual branches), but its attention goes through `F.scaled_dot_product_attention` with
`dropout_p`, which keeps the paper's attention dropout inside PyTorch's fused kernels.
Hugging Face's openai-gpt has no SDPA path: it writes the (L x L) probabilities out.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  def __init__(self, n_embd: int, n_head: int, d_ff: int, pdrop: dict, eps: float):
    super().__init__()
    self.n_head, self.attn_pdrop = n_head, pdrop['attn']
    self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
    self.c_fc, self.mlp_proj = nn.Linear(n_embd, d_ff), nn.Linear(d_ff, n_embd)
    self.ln_1, self.ln_2 = nn.LayerNorm(n_embd, eps=eps), nn.LayerNorm(n_embd, eps=eps)
    self.resid_drop = nn.Dropout(pdrop['resid'])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, length, width = x.shape
    q, k, v = (
      t.view(batch, length, self.n_head, -1).transpose(1, 2)
      for t in self.c_attn(x).split(width, dim=-1)
    )
    attended = F.scaled_dot_product_attention(
      q, k, v, dropout_p=self.attn_pdrop if self.training else 0.0, is_causal=True
    )
    attended = attended.transpose(1, 2).reshape(batch, length, width)
    x = self.ln_1(x + self.resid_drop(self.c_proj(attended)))
    mlp = self.mlp_proj(F.gelu(self.c_fc(x), approximate='tanh'))
    return self.ln_2(x + self.resid_drop(mlp))


class GPT1(nn.Module):
  """Sizes and dropout as gpt_jax's ModelConfig fields (a dict of them)."""

  def __init__(self, m: dict):
    super().__init__()
    pdrop = {'attn': m['attn_pdrop'], 'resid': m['resid_pdrop']}
    self.tokens_embed = nn.Embedding(m['vocab_size'], m['n_embd'])
    self.positions_embed = nn.Embedding(m['n_ctx'], m['n_embd'])
    self.drop = nn.Dropout(m['embd_pdrop'])
    self.h = nn.ModuleList(
      Block(m['n_embd'], m['n_head'], m['d_ff'], pdrop, m['layer_norm_epsilon'])
      for _ in range(m['n_layer'])
    )
    for module in self.modules():  # GPT-1's N(0, 0.02) weights, zero biases
      if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
      if isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)

  def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy of `targets` (same shape as tokens)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.drop(self.tokens_embed(tokens) + self.positions_embed(positions))
    for block in self.h:
      x = block(x)
    logits = x @ self.tokens_embed.weight.T  # tied output, as GPT-1
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
