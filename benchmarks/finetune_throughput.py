"""Fine-tuning throughput: every batch padded to 512 tokens against batches bucketed by length.

Generates a sentiment-style classification task whose sentence lengths follow
SST-2's with our tokenizer (mean ~25 tokens with <s> and <e>, longest ~66),
trains a BPE tokenizer on it, then fine-tunes the same randomly initialised
model (context 512) at the paper's batch of 32 twice, interleaving nothing:

  padded-512   task.bucket=0: every batch padded to max_len = n_ctx = 512
  bucketed     task.bucket=64: each batch padded to its longest sequence, rounded up to 64

and prints training examples/s (steps that compiled a new shape are left out
and counted separately) and the final validation accuracy of each.

    python benchmarks/finetune_throughput.py [--train_examples 1024] [--epochs 3]
        [--config.model.n_layer=2 ...]

Exits non-zero when bucketed is under 4x the examples/s of padded-512.
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

REQUIRED_RATIO = 4.0
_POSITIVE = ('good', 'great', 'lovely', 'superb', 'moving', 'charming', 'funny', 'brilliant')
_NEGATIVE = ('bad', 'awful', 'dull', 'boring', 'clumsy', 'tedious', 'bland', 'painful')
_FILLER = (
  'the film a story of its cast and an old director with every scene in this year '
  'which makes for some moments about love family city night war music that never '
  'quite feels like one more picture from his best work yet still offers enough to '
  'keep us watching as it goes on through two hours where nothing much happens but '
  'characters talk over dinner while the camera lingers'
).split()


def make_examples(count: int, seed: int) -> list[dict]:
  """Sentences of 1 to 64 words (log-normal, mean ~20) holding sentiment words of their label."""
  rng = np.random.default_rng(seed)
  words = np.clip(np.round(rng.lognormal(np.log(17.0), 0.6, count)), 1, 64).astype(int)
  examples = []
  for n in words:
    label = int(rng.integers(2))
    text = list(rng.choice(_FILLER, n))
    cues = (_NEGATIVE, _POSITIVE)[label]
    for position in rng.choice(n, size=min(n, 2), replace=False):
      text[position] = rng.choice(cues)
    examples.append({'text': ' '.join(text), 'label': label})
  return examples


def _config(overrides):
  from gpt_jax import config as config_lib

  config = config_lib.load_config(
    'finetune/local',
    [
      'model.n_layer=2',
      'model.n_embd=128',
      'model.n_head=4',
      'model.d_ff=512',
      'model.n_ctx=512',
      'optim.learning_rate=1e-3',
      'mesh.fsdp=1',
      'mesh.data=-1',
      *overrides,
    ],
  )
  return config


def run(config, tokenizer, train, validation, bucket: int, epochs: int) -> dict:
  """Fine-tunes from the same random weights; returns examples/s, compile time and accuracy."""
  import jax

  from gpt_jax import sharding
  from gpt_jax import train as train_lib
  from gpt_jax.model import ModelConfig
  from gpt_jax.tasks import transforms
  from gpt_jax.tasks.batches import batches
  from gpt_jax.tasks.task import TaskShape

  model_config = ModelConfig.from_config({**config.model, 'vocab_size': tokenizer.vocab_size})
  mesh = sharding.make_mesh(config.mesh)
  batch_size, max_len = config.train.batch_size, model_config.n_ctx
  total_steps = epochs * (len(train) // batch_size)
  model, trainer = train_lib.make_finetuner(
    model_config, TaskShape('classification', 2), config, mesh, total_steps
  )
  state = trainer.init(jax.random.key(config.train.seed))
  seen, compile_seconds, timed_seconds, timed_examples = set(), 0.0, 0.0, 0
  train_batches = batches(
    train,
    'classification',
    tokenizer,
    max_len,
    batch_size,
    bucket=bucket,
    shuffle_seed=config.train.seed,
    num_epochs=epochs,
  )
  for batch in train_batches:
    batch.pop('truncated')
    start = time.perf_counter()
    state, metrics = trainer.train_step(
      state, jax.tree.map(lambda x: sharding.global_batch(x, mesh), batch)
    )
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    if batch['tokens'].shape in seen:
      timed_seconds, timed_examples = timed_seconds + seconds, timed_examples + batch_size
    else:  # the first step of each shape compiles it
      seen.add(batch['tokens'].shape)
      compile_seconds += seconds
  predict = jax.jit(transforms.predict_fn(model))
  correct = total = 0
  for batch in batches(
    validation, 'classification', tokenizer, max_len, batch_size, bucket=bucket, pad_last=True
  ):
    valid = batch['valid'].astype(bool)
    predicted = np.asarray(predict(state.params, batch)).argmax(-1)
    correct += int((predicted == batch['label'])[valid].sum())
    total += int(valid.sum())
  return {
    'examples_per_s': timed_examples / timed_seconds,
    'shapes': len(seen),
    'compile_seconds': compile_seconds,
    'accuracy': correct / total,
    'final_loss': float(metrics['loss']),
  }


def main(argv=None) -> int:
  from gpt_jax.cli import _split_overrides
  from gpt_jax.data.tokenizer import train_tokenizer
  from gpt_jax.tasks.transforms import encode_example

  argv, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--train_examples', type=int, default=1024)
  parser.add_argument('--validation_examples', type=int, default=512)
  parser.add_argument('--epochs', type=int, default=3)
  args = parser.parse_args(argv)
  config = _config(overrides)

  train = make_examples(args.train_examples, seed=0)
  validation = make_examples(args.validation_examples, seed=1)
  with tempfile.TemporaryDirectory() as directory:
    tokenizer = train_tokenizer(
      [e['text'] for e in train],
      Path(directory) / 'tokenizer.model',
      vocab_size=512,
      max_bytes=10**7,
    )
  lengths = [
    len(encode_example('classification', e, tokenizer, 512, length=0)['tokens']) for e in train
  ]
  print(
    f'{len(train)} training sentences: {np.mean(lengths):.1f} tokens on average with <s> and '
    f'<e>, longest {max(lengths)} (SST-2 with our tokenizer: ~25, ~66); model '
    f'{config.model.n_layer} x {config.model.n_embd}, context {config.model.n_ctx}, batch '
    f'{config.train.batch_size}, {args.epochs} epochs'
  )
  results = {}
  for name, bucket in (('padded-512', 0), ('bucketed', 64)):
    results[name] = run(config, tokenizer, train, validation, bucket, args.epochs)
    r = results[name]
    print(
      f'{name:<11} {r["examples_per_s"]:8.1f} examples/s | {r["shapes"]} shape(s) compiled '
      f'in {r["compile_seconds"]:.1f} s | final train loss {r["final_loss"]:.3f} | '
      f'validation accuracy {r["accuracy"]:.3f}',
      flush=True,
    )
  ratio = results['bucketed']['examples_per_s'] / results['padded-512']['examples_per_s']
  noise = 2 * math.sqrt(0.25 / args.validation_examples)  # two standard errors at 50 %
  gap = abs(results['bucketed']['accuracy'] - results['padded-512']['accuracy'])
  print(
    f'bucketed / padded-512: {ratio:.1f}x examples/s (target >= {REQUIRED_RATIO:.0f}x); '
    f'accuracy difference {gap:.3f} (two standard errors: {noise:.3f})'
  )
  return 0 if ratio >= REQUIRED_RATIO else 1


if __name__ == '__main__':
  sys.exit(main())
