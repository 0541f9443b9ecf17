"""The paper's recipe on a 2-layer, 128-wide model for smoke runs and tests on a laptop CPU."""

import gpt1


def get_config():
  config = gpt1.get_config()
  config.model.update(n_ctx=128, n_embd=128, n_layer=2, n_head=4, d_ff=512)
  config.train.update(batch_size=16, seq_len=128, num_steps=300, log_every=10, eval_every=100,
                      eval_batches=5)
  config.optim.update(warmup_steps=30)
  # The offline default corpus and a 2,048-piece BPE trained on it.
  config.model.vocab_size = 2048
  config.data.corpus = 'stdlib_docs'
  return config
