"""GPT-1 as published (Radford et al. 2018): the 117M model and its pretraining recipe.

Every default here is the paper's value; the comments say where each comes from.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # JAX's persistent compilation cache: a restarted run reads its compiled steps back
  # instead of compiling them again. A local directory or gs://; '' turns it off.
  config.compile_cache_dir = '~/.cache/gpt_jax/jax_cache'

  config.model = ml_collections.ConfigDict(
    dict(
      vocab_size=40478,  # 40,000 BPE merges + base symbols, as in the released model
      n_ctx=512,
      n_embd=768,
      n_layer=12,
      n_head=12,
      d_ff=3072,
      embd_pdrop=0.1,  # dropout on embeddings, attention, residual branches
      attn_pdrop=0.1,
      resid_pdrop=0.1,
      layer_norm_epsilon=1e-5,
      dtype='float32',  # compute dtype; 'bfloat16' on TPU / GPU
      param_dtype='float32',
      # Activations a block keeps for the backward pass; the rest is recomputed: none (keep
      # all), full (keep the block input only), dots_saveable, dots_with_no_batch_dims_saveable,
      # save_qkv_mlp. See the remat table in the README.
      remat='none',
      scan_layers=False,  # one compiled block under nn.scan, parameters stacked on 'layers'
      # 'auto' (flash on a TPU or GPU, xla on a CPU), 'xla' (the reference), 'flash' (our
      # Pallas kernel with the attention dropout inside, TPU and GPU; interpreted on a CPU),
      # 'dot_product_attention' (cuDNN on NVIDIA GPUs) or 'splash' (Pallas, TPU); the last
      # two need attn_pdrop=0 to train. See docs/attention.md.
      attention='auto',
      # The training loss pads the vocabulary to a multiple of this inside the compiled step
      # (zero rows, -inf logits; parameters and checkpoints keep vocab_size rows). 1: none;
      # 128 on TPU / GPU, whose matmul tiles it fits. See docs/gpu.md.
      pad_vocab_to=1,
      # Positions per sequence whose LM logits the pretraining loss makes at a time, their
      # gradients in the same pass (memory); 0: all at once, as a plain autodiff step.
      lm_chunk=0,
      # 'transformer' (GPT-1) or 'lstm': the paper's baseline, one LSTM layer of lstm_units
      # under the same tied embedding (see docs/lstm.md and configs/lstm.py).
      arch='transformer',
      lstm_units=2048,
    )
  )

  config.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=2.5e-4,  # Adam, max lr 2.5e-4
      schedule='cosine',  # linear warmup from 0, cosine annealing to 0
      warmup_steps=2000,
      warmup_fraction=0.002,  # used by the 'linear' (fine-tuning) schedule only
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,  # "modified L2": decoupled, weight matrices only
      clip_norm=1.0,  # global-norm gradient clipping, as in the original release
      grad_accum_steps=1,
    )
  )

  config.train = ml_collections.ConfigDict(
    dict(
      batch_size=64,  # global batch: 64 random contiguous windows ...
      seq_len=512,  # ... of 512 tokens
      num_epochs=100.0,  # epochs over the corpus; sets num_steps when that is -1
      num_steps=-1,  # optimizer updates; -1 derives it from num_epochs and the corpus size
      seed=0,
      log_every=100,
      eval_every=2000,
      eval_batches=20,
      max_nonfinite_in_a_row=10,  # non-finite loss/gradient steps are skipped; this many stop
      # Updates per compiled call (a scan over that many batches; metrics stay per step).
      # Not the paper's concern: the updates are the same. 0 (auto): 8 on a CPU, where it
      # makes steps 10-20 % faster (XLA pages in a call's temporaries afresh, once per call),
      # 1 on TPU / GPU, where it would only save dispatches. Calls end at evaluations and
      # saves, so use a divisor of eval_every and every_steps.
      steps_per_call=0,
      # No progress for this long (a step, a save, an evaluation, a batch that never comes:
      # a storage request or a collective stuck) ends the run with exit code 3 and every
      # thread's stack, for a scheduler to restart it; 0: off. See docs/fault_tolerance.md.
      hang_timeout_s=600.0,
      # After SIGTERM the run saves at the next step boundary and exits; stuck longer than
      # this, it exits anyway (code 3) so that preemption never waits on it. 0: off.
      preemption_grace_s=30.0,
      # Zero-shot probes during pretraining (the paper's figure 2, right; gpt_jax/probes.py):
      # task configs with a probe, comma-separated ('': none), e.g. finetune/sst2,finetune/cola
      zero_shot='',
      zero_shot_every='log',  # 'log' (1, 2, 5, 10, 20, 50, ... and the last) or steps: 100,1000
      zero_shot_batch_size=8,  # rows per scoring batch
      # Loss-spike rollback (gpt_jax/spike.py; the paper did not need it): a step whose loss
      # is spike_threshold standard deviations above the mean of the previous spike_window
      # steps rolls back to the newest checkpoint before it and skips the batches that fed
      # the steps from there to the spike; spike_max_rollbacks in a row without getting
      # past a spike stop the run.
      spike=False,
      spike_threshold=6.0,
      spike_window=100,
      spike_max_rollbacks=3,
    )
  )

  # Checkpoints in <workdir>/checkpoints: also saved after every evaluation, at the end and
  # on SIGTERM; rerunning the same command on the workdir resumes from the newest.
  config.checkpoint = ml_collections.ConfigDict(
    dict(
      every_steps=1000,
      keep=3,  # the newest checkpoints kept ...
      keep_best=1,  # ... plus the best by best_metric (0: none)
      best_metric='eval_loss',
      best_mode='min',
      async_save=True,  # write files in the background while training goes on
      keep_log_spaced=False,  # also keep steps 1, 2, 5, 10, 20, 50, ... (zero-shot curves)
      # One writer per workdir (gpt_jax/lease.py): in a bucket the lease is renewed every
      # lease_heartbeat_s seconds and taken over by another run once it has not been renewed
      # for lease_stale_after_s; a local workdir's lock is released by the kernel.
      lease_heartbeat_s=30.0,
      lease_stale_after_s=90.0,
    )
  )

  # Device mesh: sizes of ('data', 'fsdp', 'tensor'); one may be -1 (the rest).
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  # Pretraining data (gpt_jax/data): a corpus, a BPE tokenizer of model.vocab_size pieces
  # trained on it (`gpt-jax tokenizer`), and its token store (`gpt-jax prepare`).
  config.data = ml_collections.ConfigDict(
    dict(
      # pg19 (books, the closest public stand-in for BooksCorpus; a TFDS dataset you prepare),
      # stdlib_docs (the offline default), local_text, or any TFDS dataset name.
      corpus='pg19',
      text_glob='',  # local_text: *.txt (a document per file), *.jsonl (one per line, "text")
      text_key='',  # TFDS feature holding the text ('': book_text for pg19, else text)
      validation_split='',  # TFDS split to evaluate on ('': validation, else test, else held out)
      validation_fraction=0.05,  # documents held out when the corpus has no validation split
      data_dir='',  # TFDS data_dir, also holding tokenizers and stores ('': ~/tensorflow_datasets);
      # may be a bucket (gs://...): tokenizers and stores go there, TFDS datasets are then read
      # from tfds_dir
      tfds_dir='',  # local TFDS data_dir when data_dir is a bucket ('': ~/tensorflow_datasets)
      download=False,  # let TFDS download and prepare a catalogue corpus (needs internet)
      tokenizer='',  # sentencepiece .model ('': named after corpus and vocab_size in data_dir)
      tokenizer_max_bytes=100_000_000,  # text read to train the tokenizer
      store='',  # token store directory ('': named after corpus and tokenizer in data_dir)
      shard_mb=256.0,  # MiB of text per token-store shard (the unit of parallel preparation)
      prepare_workers=0,  # local tokenizing processes for `gpt-jax prepare` (0: one per core)
      seed=0,  # order and boundaries of the training windows
      num_threads=2,  # grain reader threads (each prepares a batch)
      # Range requests in flight per process for a store in a bucket (more reader threads
      # are started to keep them busy, up to 16).
      read_concurrency=256,
    )
  )

  # Where runs report besides metrics.jsonl and TensorBoard (written by process 0 only).
  config.report = ml_collections.ConfigDict(
    dict(
      wandb_project='',  # a Weights & Biases project: logs the config once, metrics every log
      wandb_entity='',  # W&B team or user ('': your default)
      wandb_name='',  # run name ('': the workdir's name)
      wandb_mode='',  # 'online', 'offline' (sync later with `wandb sync`) or '': W&B's default
    )
  )
  return config
