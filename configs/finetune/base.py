"""GPT-1's fine-tuning recipe (Radford et al. 2018, section 4.1), the base of every task config.

The model's shape and tokenizer come from finetune.init (a pretraining workdir
or a Hugging Face directory); the model section only sets numerics and dropout.
"""

import ml_collections

from gpt_jax.configs import gpt1


def get_config() -> ml_collections.ConfigDict:
  config = gpt1.get_config()
  config.optim.update(
    learning_rate=6.25e-5,
    schedule='linear',  # linear warmup over warmup_fraction of the steps, then linear decay to 0
    warmup_fraction=0.002,  # 0.2% of training
    weight_decay=0.01,
  )
  config.train.update(
    batch_size=32,
    num_epochs=3.0,
    num_steps=-1,  # -1: num_epochs over the task's training split
  )
  config.task = ml_collections.ConfigDict(
    dict(
      # A registry task ('sst2' or its TFDS name 'glue/sst2'), 'local' (your own files, see
      # finetune/local.py), or an offline default task (stdlib_package, stdlib_continuation,
      # stdlib_same_module, stdlib_next_sentence); see gpt_jax.tasks.load.load_task.
      name='sst2',
      data_dir='',  # TFDS data_dir of a registry task ('': ~/tensorflow_datasets)
      kind='',  # local: classification, entailment, similarity or multiple_choice
      train='',  # local: the split files (.jsonl, .csv or .tsv)
      validation='',
      test='',
      labels='',  # local: the class labels, comma-separated ('': those of the train file)
      regression=False,  # a score instead of classes (STS-B; local similarity tasks)
      max_len=-1,  # tokens per sequence; -1: the model's n_ctx
      # Each batch is padded to its longest sequence rounded up to a multiple of this (at most
      # max_len / bucket step shapes compile); 0: every batch padded to max_len.
      bucket=64,
      max_train_examples=-1,  # -1: every training example; N: the first N (a smoke run)
      # Training examples scored like validation every epoch (train_accuracy ...): a fixed
      # subset drawn once by train.seed, for train-vs-dev curves; 0: none.
      train_eval_examples=0,
      # Offline default tasks only:
      seed=0,  # which examples, wrong texts and answer positions; not the split
      max_eval_examples=-1,  # -1: all; N: the first N of validation and of test
      # Zero-shot probes (gpt-jax eval --zero_shot; see gpt_jax/zero_shot.py):
      prompt='',  # what the model reads, with {field} slots, e.g. '{text} very' ('': the fields)
      verbalizer='',  # classes as words after the prompt: 'negative:terrible,positive:great'
      zero_shot_score='mean',  # an answer's token log-probabilities: 'mean' (paper) or 'sum'
      acceptability=False,  # CoLA-style: the text's mean token log-probability, thresholded
      acceptability_threshold=float('nan'),  # NaN: keep the training labels' positive share
    )
  )
  config.finetune = ml_collections.ConfigDict(
    dict(
      init='',  # a pretraining workdir or a Hugging Face directory (--init)
      random_init=False,  # True: init's shape and tokenizer, random weights (the paper's ablation)
      # Pretrained layers kept (OpenAI's --n_transfer): -1 none (= random_init), 0 the
      # embeddings, K the embeddings and the first K blocks; the rest start as a fresh model's.
      n_transfer='all',
      # False: <s>, $ and <e> start from fresh N(0, 0.02) rows, as in the paper, also when
      # init's vocabulary already holds them (our tokenizer reserves them; pretraining never
      # feeds them). True keeps init's rows (e.g. to continue from a fine-tuned model).
      keep_special_rows=False,
      lm_coef=0.5,  # weight of the auxiliary language-model loss; 0 leaves it out
      lm_chunk=128,  # LM logits are made this many positions per sequence at a time (memory)
      clf_pdrop=0.1,  # dropout before the classifier
      eval_batch_size=64,
    )
  )
  return config
