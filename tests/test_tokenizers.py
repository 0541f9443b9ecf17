"""The two tokenizer implementations against Hugging Face's, on every stdlib docstring document.

References: transformers' `OpenAIGPTTokenizer` (GPT-1's BPE) for a GPT-1-format
vocab.json / merges.txt trained here with `tokenizers`' BPE trainer, and our own
sentencepiece model (read by sentencepiece itself) for its conversion to a
`tokenizer.json` that transformers' `AutoTokenizer` loads.
"""

import json

import pytest
import transformers
from helpers import stdlib_documents, write_gpt1_bpe

from gpt_jax.data import hf_tokenizer
from gpt_jax.data.tokenizer import Tokenizer, train_tokenizer
from gpt_jax.errors import UserError

TRICKY = [
  '  two  spaces\n\n\tand a tab',
  'Caf\u00e9 NA\u00cfVE \u4e2d\u6587 \U0001f600 a\u2581b',
  'raw <s> $ <e> <pad> <|endoftext|> spellings',
  '',
  '   ',
]


@pytest.fixture(scope='module')
def documents() -> list[str]:
  return stdlib_documents()


@pytest.fixture(scope='module')
def gpt1_files(documents, tmp_path_factory):
  directory = tmp_path_factory.mktemp('gpt1_bpe')
  write_gpt1_bpe(directory, documents, 3000)
  return directory


@pytest.fixture(scope='module')
def sentencepiece(documents, tmp_path_factory) -> Tokenizer:
  path = tmp_path_factory.mktemp('spm') / 'tokenizer.model'
  return train_tokenizer(documents, path, 1024, max_bytes=400_000)


def test_gpt1_bpe_gives_the_ids_of_openai_gpt_tokenizer_on_every_document(documents, gpt1_files):
  ours = hf_tokenizer.tokenizer_in(gpt1_files)
  reference = transformers.OpenAIGPTTokenizer.from_pretrained(str(gpt1_files))
  expected = reference(documents + TRICKY, add_special_tokens=False)['input_ids']
  got = ours.encode_batch(documents + TRICKY)
  mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
  assert not mismatched, f'{len(mismatched)} of {len(got)} documents differ, e.g. #{mismatched[0]}'
  assert sum(map(len, got)) > 100_000
  for text in documents[:50]:
    ids = ours.encode(text)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_fine_tuning_tokens_follow_the_vocabulary_and_text_never_makes_them(gpt1_files):
  ours = hf_tokenizer.read_gpt1_bpe(gpt1_files / 'vocab.json', gpt1_files / 'merges.txt')
  base = len(json.loads((gpt1_files / 'vocab.json').read_text()))
  assert ours.text_vocab_size == base
  assert (ours.start_id, ours.delimiter_id, ours.extract_id) == (base, base + 1, base + 2)
  assert ours.vocab_size == base + 3 and ours.eod_id is None and ours.pad_id == ours.extract_id
  special = {ours.start_id, ours.delimiter_id, ours.extract_id}
  for text in TRICKY:
    assert not special & set(ours.encode(text))
  assert ours.decode([ours.start_id, *ours.encode('hello world'), ours.extract_id]) == 'hello world'
  assert ours.id_to_piece(ours.extract_id) == '<e>'
  with pytest.raises(IndexError):  # as sentencepiece does, rather than a None piece
    ours.id_to_piece(ours.vocab_size)


def test_openai_release_file_names_read_the_same_tables(gpt1_files, tmp_path):
  (tmp_path / 'encoder_bpe_40000.json').write_text((gpt1_files / 'vocab.json').read_text())
  (tmp_path / 'vocab_40000.bpe').write_text((gpt1_files / 'merges.txt').read_text())
  release, hf_layout = hf_tokenizer.tokenizer_in(tmp_path), hf_tokenizer.tokenizer_in(gpt1_files)
  assert release.encode(TRICKY[1]) == hf_layout.encode(TRICKY[1])
  assert release.fingerprint() == hf_layout.fingerprint()


def test_sentencepiece_export_loads_in_auto_tokenizer_with_the_same_ids(
  documents, sentencepiece, tmp_path
):
  hf_tokenizer.write_for_hf(sentencepiece, tmp_path)
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  texts = documents + TRICKY
  expected = sentencepiece.encode_batch(texts)
  got = reference(texts, add_special_tokens=False)['input_ids']
  mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
  assert not mismatched, f'{len(mismatched)} of {len(got)} documents differ, e.g. #{mismatched[0]}'
  for text in texts[:50] + TRICKY:
    assert reference.decode(sentencepiece.encode(text)) == sentencepiece.decode(
      sentencepiece.encode(text)
    )
  assert reference.pad_token_id == sentencepiece.pad_id
  assert reference.eos_token_id == sentencepiece.eod_id


def test_hf_tokenizer_survives_a_workdir_round_trip(gpt1_files, tmp_path):
  ours = hf_tokenizer.tokenizer_in(gpt1_files)
  ours.copy_to(tmp_path / 'workdir')
  again = hf_tokenizer.tokenizer_in(tmp_path / 'workdir')
  assert isinstance(again, hf_tokenizer.HFTokenizer)
  assert again.special_ids == ours.special_ids and again.vocab_size == ours.vocab_size
  assert again.encode(TRICKY[2]) == ours.encode(TRICKY[2])


def test_broken_tokenizer_files_are_one_line_errors(gpt1_files, tmp_path):
  (tmp_path / 'vocab.json').write_text('{not json')
  (tmp_path / 'merges.txt').write_text('#version: 0.2\na b c\n')
  with pytest.raises(UserError, match='vocab.json is not valid JSON'):
    hf_tokenizer.tokenizer_in(tmp_path)
  (tmp_path / 'vocab.json').write_text((gpt1_files / 'vocab.json').read_text())
  with pytest.raises(UserError, match='merges.txt line 2 is not a merge'):
    hf_tokenizer.tokenizer_in(tmp_path)
  (tmp_path / 'tokenizer.json').write_text('{}')
  with pytest.raises(UserError, match='tokenizer.json is not a Hugging Face tokenizer.json'):
    hf_tokenizer.tokenizer_in(tmp_path)
