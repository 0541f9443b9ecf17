"""The LSTM baseline (model.arch=lstm): a numpy float64 LSTM, a 1-device run, an uninterrupted
run, and the commands (pretrain, fine-tune, sample, zero-shot) end to end."""

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import make_trainer, max_relative_difference, prepared_local_corpus, tiny_config
from jax.sharding import PartitionSpec as P

from gpt_jax import checkpoint, cli, sharding, zero_shot
from gpt_jax.data.tokenizer import Tokenizer
from gpt_jax.model import ModelConfig, decoder
from gpt_jax.report import read_metrics
from gpt_jax.sample import generate
from gpt_jax.scoring import Scorer
from gpt_jax.tasks.task import pronoun_example

SMALL = ModelConfig(vocab_size=40, n_ctx=32, n_embd=12, arch='lstm', lstm_units=20)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm_logits(params, tokens: np.ndarray) -> np.ndarray:
  """The LSTM's logits (length, vocab) for one row, in float64 with no gpt_jax code: the
  textbook cell, gates in the order input, forget, cell, output."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  embedding = p['tokens_embed']['embedding']
  w_x, w_h, b = p['input_kernel'], p['recurrent_kernel'], p['bias']
  units = w_h.shape[0]
  h, c, outputs = np.zeros(units), np.zeros(units), []
  for token in tokens:
    z = np.einsum('d,dgu->gu', embedding[token], w_x) + np.einsum('u,ugv->gv', h, w_h) + b
    c = _sigmoid(z[1]) * c + _sigmoid(z[0]) * np.tanh(z[2])
    h = _sigmoid(z[3]) * np.tanh(c)
    outputs.append(h @ p['proj'] if 'proj' in p else h)
  return np.stack(outputs) @ embedding.T


def _scaled_params(model_config: ModelConfig, scale: float = 25.0):
  """Random parameters scaled up so the gates saturate differently (N(0, 0.02) keeps
  every gate near 0.5, where a wrong gate order would go unnoticed)."""
  model = decoder(model_config)
  params = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))['params'])
  keys = iter(jax.random.split(jax.random.key(2), 8))
  return jax.tree.map(
    lambda a: a * scale + 0.1 * jax.random.normal(next(keys), a.shape) * (a.ndim == 2), params
  )


def test_logits_equal_a_float64_numpy_lstm():
  params = _scaled_params(SMALL)
  assert set(params) == {'tokens_embed', 'input_kernel', 'recurrent_kernel', 'bias', 'proj'}
  tokens = np.random.default_rng(0).integers(0, SMALL.vocab_size, (3, 9))
  ours = np.asarray(decoder(SMALL).apply({'params': params}, jnp.asarray(tokens)))
  for row, expected in zip(ours, (numpy_lstm_logits(params, t) for t in tokens)):
    np.testing.assert_allclose(row, expected, rtol=2e-5, atol=2e-5)


def test_greedy_decoding_carries_the_state_and_matches_recomputing():
  """Left-padded prompts of different lengths decode through the carried (h, c) to the
  tokens the numpy LSTM's argmax gives when it recomputes the whole prefix each step."""
  params = _scaled_params(SMALL, scale=10.0)
  prompts = [[3, 7, 1], [5, 2, 9, 9, 4, 11, 2]]
  new = generate(params, SMALL, prompts, 6, temperature=0.0)
  for prompt, tokens in zip(prompts, new):
    expected = list(prompt)
    for _ in range(6):
      expected.append(int(numpy_lstm_logits(params, np.asarray(expected))[-1].argmax()))
    assert tokens == expected[len(prompt) :]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return prepared_local_corpus(tmp_path_factory.mktemp('lstm_corpus'))


def _lstm_config(**model):
  config = tiny_config(arch='lstm', lstm_units=48, **model)
  config.model.update(embd_pdrop=0.0, resid_pdrop=0.0)
  return config


def _run_steps(mesh_config, devices, batches):
  mesh = sharding.make_mesh(mesh_config, devices)
  config = _lstm_config()
  # Adam divides each update by its gradient's size: a gradient of rounding size (the forget
  # gate's bias at the first steps, where c_0 = 0) would take an lr-sized step whose sign
  # depends on the device layout. eps above those gradients keeps the comparison to the math.
  config.optim.eps = 1e-3
  _, trainer = make_trainer(config, mesh)
  state = trainer.init(jax.random.key(0))
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return state, losses


def test_sharded_train_step_on_8_devices_equals_one_device():
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 64, (8, 17)).astype(np.int32) for _ in range(3)]
  sharded, sharded_losses = _run_steps(dict(data=2, fsdp=2, tensor=2), jax.devices(), batches)
  single, single_losses = _run_steps(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], batches)
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  sharded_params = jax.device_get(sharded.params)
  # The bias starts at zero and has moved ~1e-5 after three steps: compared absolutely.
  np.testing.assert_allclose(sharded_params.pop('bias'), single.params['bias'], atol=1e-7)
  rest = {name: value for name, value in single.params.items() if name != 'bias'}
  assert max_relative_difference(sharded_params, rest) <= 1e-5
  assert sharded.params['recurrent_kernel'].sharding.spec == P('fsdp', None, 'tensor')
  assert sharded.params['input_kernel'].sharding.spec == P('fsdp', None, 'tensor')
  assert sharded.params['proj'].sharding.spec == P('tensor', 'fsdp')


def test_transformer_only_options_are_ignored_or_one_line(corpus, tmp_path, capsys):
  ignored = ModelConfig.from_config(
    _lstm_config(attention='flash', n_head=5, n_layer=4, d_ff=7).model
  )
  assert ignored.arch == 'lstm' and ignored.n_layer == 1
  for flag, message in [
    ('--config.model.arch=unknown', "model.arch='unknown' is not a model family; use one of: "),
    ('--config.model.remat=full', 'model.remat and model.scan_layers apply to Transformer'),
  ]:
    workdir = tmp_path / 'run'
    argv = ['pretrain', '--config', 'lstm_tiny', '--workdir', str(workdir), *corpus, flag]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith('gpt-jax: error: ') and message in error, error
    assert len(error.strip().splitlines()) == 1 and not (workdir / 'checkpoints').exists()


# A pretraining run of the tiny LSTM on a repetitive corpus: the resume test's reference,
# and the model the commands below read.
NUM_STEPS = 40
PRETRAIN = [
  '--config.model.n_ctx=32',
  '--config.model.n_embd=32',
  '--config.model.lstm_units=64',
  '--config.train.seq_len=16',
  '--config.train.batch_size=8',
  '--config.train.log_every=1',
  '--config.train.eval_every=20',
  '--config.train.eval_batches=1',
  '--config.train.steps_per_call=1',
  '--config.checkpoint.every_steps=10',
  '--config.checkpoint.keep=10',
  '--config.optim.learning_rate=1e-2',
  '--config.optim.warmup_steps=5',
  '--config.mesh.fsdp=1',
  '--config.mesh.data=-1',
]


def _pretrain(workdir, corpus) -> None:
  argv = ['pretrain', '--config', 'lstm_tiny', '--workdir', str(workdir), *corpus, *PRETRAIN]
  assert cli.main([*argv, f'--config.train.num_steps={NUM_STEPS}']) == 0


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, corpus):
  workdir = tmp_path_factory.mktemp('lstm_pretrain') / 'run'
  _pretrain(workdir, corpus)
  return workdir


def _curve(workdir):
  return [(r['split'], r['step'], r['loss']) for r in read_metrics(workdir / 'metrics.jsonl')]


def test_interrupted_run_resumes_bitwise(pretrained, corpus, tmp_path):
  """A copy of the finished run cut back to its step-10 checkpoint (as if killed after
  logging step 40 but before saving step 20) resumes to the same parameters and curve."""
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained, workdir)
  for step in (20, 30, 40):
    shutil.rmtree(workdir / 'checkpoints' / str(step))
  _pretrain(workdir, corpus)
  assert _curve(workdir) == _curve(pretrained)
  resumed, reference = (checkpoint.load_params(w, step=NUM_STEPS) for w in (workdir, pretrained))
  assert 'recurrent_kernel' in resumed
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(a, b)


SENTENCE = 'the quick brown fox jumps over the lazy dog. '


@pytest.fixture(scope='module')
def memorised(corpus):
  """(params, model config, tokenizer): the tiny LSTM trained until it recites SENTENCE.

  800 steps on windows of the sentence repeated (a few seconds on one device): its greedy
  text is then the sentence, predicted with high probability, which a random model's is not.
  """
  data_dir = next(flag.split('=', 1)[1] for flag in corpus if 'data_dir' in flag)
  [model_path] = Path(data_dir).glob('gpt_jax_tokenizers/*.model')
  tokenizer = Tokenizer(model_path)
  stream = np.asarray(tokenizer.encode(SENTENCE * 40), np.int32)
  config = tiny_config(arch='lstm', lstm_units=64, vocab_size=320)
  config.model.update(embd_pdrop=0.0, resid_pdrop=0.0)
  config.optim.update(learning_rate=2e-2, warmup_steps=10, weight_decay=0.0)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  steps = 800
  _, trainer = make_trainer(config, mesh, total_steps=steps)
  state = trainer.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  for _ in range(steps):
    starts = rng.integers(0, len(stream) - 17, 8)
    batch = np.stack([stream[s : s + 17] for s in starts])
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
  assert float(metrics['loss']) < 0.5
  return jax.device_get(state.params), ModelConfig.from_config(config.model), tokenizer


def _greedy_examples(memorised, prompts: list[str], n_new: int = 12):
  """Pronoun examples built from the model's own greedy text: for each prompt, the first
  greedy word is the right candidate, the word piece the model finds least likely there the
  wrong one, and the rest of the greedy text follows the pronoun."""
  params, model_config, tokenizer = memorised
  words = [i for i in range(model_config.vocab_size) if _is_word(tokenizer, i)]
  examples = []
  for prompt in prompts:
    ids = tokenizer.encode(prompt)
    [new], [logits] = generate(
      params, model_config, [ids], n_new, temperature=0.0, return_logits=True
    )
    wrong = min(words, key=lambda i: logits[0][i])
    greedy = tokenizer.decode(ids + new)[len(prompt) :]
    right, rest = greedy.split(maxsplit=1)
    before = prompt + ' '
    candidates = [right, tokenizer.decode([wrong]).strip()]
    sentence = before + 'it ' + rest
    examples.append(pronoun_example(sentence, [len(before), len(before) + 2], candidates, 'test'))
  return examples


def _is_word(tokenizer, token_id: int) -> bool:
  text = tokenizer.decode([token_id]).strip()
  return len(text) > 1 and text.isalpha()


def test_substitution_probe_picks_the_models_own_greedy_word(memorised):
  """The probe scores the rest of the sentence after each candidate; with the right one it is
  the model's greedy text, so accuracy is 1.0 exactly, and 0.0 with the labels swapped."""
  params, model_config, tokenizer = memorised
  prompts = ['the quick brown', 'the quick', 'jumps over the', 'over the lazy', 'the lazy dog.']
  examples = _greedy_examples(memorised, prompts)
  assert examples[0]['candidates'][0] == 'fox', examples[0]
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  scorer = Scorer(params, model_config, mesh, 8, 31)
  scores = zero_shot.substitution_scores(scorer, tokenizer, examples)
  predicted = scores.argmax(-1)
  right, swapped = np.zeros(len(examples)), np.ones(len(examples))
  assert np.mean(predicted == right) == 1.0, (scores, [e['candidates'] for e in examples])
  assert np.mean(predicted == swapped) == 0.0


def test_finetune_sample_and_zero_shot_through_the_cli(pretrained, tmp_path, capsys):
  rows = [{'text': f'the quick brown fox {i} jumps', 'label': 'fox'} for i in range(12)] + [
    {'text': f'over the lazy dog {i}', 'label': 'dog'} for i in range(12)
  ]
  for split in ('train', 'validation'):
    (tmp_path / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  task = [
    '--config.task.name=local',
    '--config.task.kind=classification',
    f'--config.task.train={tmp_path / "train.jsonl"}',
    f'--config.task.validation={tmp_path / "validation.jsonl"}',
    '--config.task.labels=dog,fox',
    '--config.mesh.fsdp=1',
    '--config.mesh.data=-1',
  ]
  workdir = tmp_path / 'finetune'
  finetune = ['finetune', '--config', 'finetune/local', '--workdir', str(workdir)]
  flags = ['--init', str(pretrained), *task, '--config.train.batch_size=8']
  flags += ['--config.finetune.eval_batch_size=8', '--config.train.num_epochs=1.0']
  assert cli.main([*finetune, *flags, '--config.model.arch=lstm']) == 0
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['model_arch'] == 'lstm' and 'validation_accuracy' in summary['best']
  train = [r for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'train']
  assert {'task_loss', 'lm_loss'} <= set(train[-1])

  capsys.readouterr()  # the ablation table's fourth row comes from the run's own summary
  assert (
    cli.main(['analysis', 'ablations', '--out', str(tmp_path / 'a'), '--runs', str(workdir)]) == 0
  )
  assert '| LSTM w/ aux LM |' in capsys.readouterr().out
  sample = ['sample', '--workdir', str(pretrained), '--prompt', 'the quick', '--temperature', '0']
  assert cli.main([*sample, '--max_new_tokens', '6']) == 0
  assert capsys.readouterr().out.strip()
  export = ['export', '--workdir', str(pretrained), '--out', str(tmp_path / 'hf')]
  assert cli.main(export) == 1
  assert capsys.readouterr().err.startswith('gpt-jax: error: a model.arch=lstm model cannot be')
  assert not (tmp_path / 'hf').exists()

  out = tmp_path / 'zero_shot.json'
  probe = ['eval', '--init', str(pretrained), '--zero_shot', '--config', 'finetune/local']
  verbalizer = '--config.task.verbalizer=fox:fox,dog:dog'
  assert cli.main([*probe, *task, verbalizer, '--out', str(out)]) == 0
  accuracy = json.loads(out.read_text())['splits']['validation']['accuracy']
  assert 0.0 <= accuracy <= 1.0


def test_dprd_from_a_locally_built_tfds_copy_through_the_substitution_probe(memorised, tmp_path):
  """The registry's 'dprd' entry reads the real definite_pronoun_resolution builder's
  dataset (built here from files in its four-line format) and the probe scores it: on
  examples made from the model's greedy text, with the right candidate first or second,
  every answer is right."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.text import definite_pronoun_resolution as dprd

  from gpt_jax.tasks import registry

  params, model_config, tokenizer = memorised
  prompts = ['the quick brown', 'jumps over the', 'over the lazy', 'the quick', 'brown fox']
  examples = _greedy_examples(memorised, prompts)
  lines, labels = [], []
  for k, example in enumerate(examples):
    candidates = example['candidates'][:: 1 - 2 * (k % 2)]  # odd examples: right one second
    labels.append(candidates.index(example['candidates'][0]))
    lines += [example['sentence'], 'it', ','.join(candidates), example['candidates'][0], '']
  source = tmp_path / 'test.c.txt'
  source.write_text('\n'.join(lines) + '\n')

  class Local(dprd.DefinitePronounResolution, skip_registration=True):
    name = dprd.DefinitePronounResolution.name

    def _split_generators(self, dl_manager):
      return [  # the real dataset's two splits; the probe scores test
        tfds.core.SplitGenerator(name=split, gen_kwargs={'filepath': str(source)})
        for split in ('test', 'train')
      ]

  Local(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  task = registry.load_tfds_task('dprd', str(tmp_path))
  scored = task.validation['test']
  assert task.kind == 'pronoun' and len(scored) == len(examples)
  stored = sorted((scored[i]['sentence'], int(scored[i]['label'])) for i in range(len(scored)))
  assert stored == sorted((e['sentence'].strip(), label) for e, label in zip(examples, labels))
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  scorer = Scorer(params, model_config, mesh, 8, 31)
  probe = zero_shot.probe_for(task, ml_collections.ConfigDict({'prompt': ''}))
  assert probe.method == 'substitution'
  result = zero_shot.evaluate(scorer, tokenizer, task, probe, {'test': scored})
  assert result['test']['accuracy'] == 1.0 and result['test']['chance'] == 0.5
