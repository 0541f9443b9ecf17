"""GPT-1 as Hugging Face publishes it -> gpt-jax finetune -> gpt-jax export -> Hugging Face again.

The source directory is built here in openai-gpt's published layout: a random
`OpenAIGPTLMHeadModel` at a small size, saved by transformers, with a GPT-1-format
vocab.json + merges.txt. The reference at the end is transformers alone:
`AutoTokenizer` and `OpenAIGPTLMHeadModel.from_pretrained` on the exported directory.
"""

import shutil

import numpy as np
import torch
import transformers
from helpers import stdlib_documents, write_gpt1_bpe
from test_finetune import _task_files
from test_model_reference import SMALL, hf_logits, max_abs_diff, our_logits, random_hf_model

from gpt_jax import cli, sample
from gpt_jax.weights import load_weights

PROMPT = 'The module returns a value.'  # short: SMALL's context is 16 positions


def test_finetune_from_published_layout_then_export_reproduces_ids_logits_and_greedy_sample(
  tmp_path, capsys
):
  bpe = tmp_path / 'bpe'
  bpe.mkdir()
  vocab_size = write_gpt1_bpe(bpe, stdlib_documents()[:100], 400)
  random_hf_model(seed=7, std=0.1, **{**SMALL, 'vocab_size': vocab_size}).save_pretrained(
    tmp_path / 'openai-gpt'
  )
  for name in ('vocab.json', 'merges.txt'):
    shutil.copy(bpe / name, tmp_path / 'openai-gpt' / name)

  assert (
    cli.main(
      [
        'finetune',
        '--config',
        'configs/finetune/local.py',
        '--workdir',
        str(tmp_path / 'ft'),
        '--init',
        str(tmp_path / 'openai-gpt'),
        *_task_files(tmp_path),
        '--config.task.max_len=16',
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_steps=3',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ]
    )
    == 0
  )
  assert (
    cli.main(['export', '--workdir', str(tmp_path / 'ft'), '--out', str(tmp_path / 'export')]) == 0
  )
  capsys.readouterr()

  ours = load_weights(tmp_path / 'ft')
  assert ours.model_config.vocab_size == vocab_size + 3  # <s>, $, <e> after the vocabulary
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'export'))
  model = transformers.OpenAIGPTLMHeadModel.from_pretrained(str(tmp_path / 'export')).eval()
  ids = ours.tokenizer.encode(PROMPT)
  assert tokenizer(PROMPT, add_special_tokens=False)['input_ids'] == ids
  tokens = np.asarray([ids])
  assert (
    max_abs_diff(our_logits(ours.params, ours.model_config, tokens), hf_logits(model, tokens))
    <= 1e-5
  )

  greedy = sample.generate(ours.params, ours.model_config, [ids], 6, temperature=0.0)[0]
  with torch.no_grad():
    reference = model.generate(
      torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )[0, len(ids) :].tolist()
  assert list(greedy) == reference
