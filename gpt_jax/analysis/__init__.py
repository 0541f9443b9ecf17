"""The paper's section 5 as commands (`gpt-jax analysis`): layers transferred (figure 2, left),
zero-shot probes over pretraining (figure 2, right) and the ablation table (table 5)."""
