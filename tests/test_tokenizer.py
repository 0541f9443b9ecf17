"""The BPE tokenizer: round trips, unreachable control tokens, stable recorded ids."""

import argparse
import inspect
import json
import pathlib
import string
import textwrap

import pytest
import sentencepiece as spm

from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

# Text every machine has: docstrings of a few standard-library modules.
DOCUMENTS = [
  inspect.getdoc(obj)
  for module in (argparse, json, pathlib, textwrap)
  for obj in [module, *vars(module).values()]
  if inspect.getdoc(obj) and getattr(obj, '__module__', module.__name__) == module.__name__
]
SPECIAL = ('pad_id', 'eod_id', 'start_id', 'delimiter_id', 'extract_id')


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'bpe.model'
  return tokenizer_lib.train_tokenizer(
    DOCUMENTS, path, vocab_size=600, max_bytes=10**7, description='stdlib docstrings'
  )


@pytest.mark.parametrize(
  'text',
  [
    DOCUMENTS[0],
    'Indented:\n    code  with  double spaces\n\n\nand blank lines\t(tab)',
    'Unseen characters fall back to bytes: héllo, 日本語, emoji 🙂, control \x07',
    ' leading and trailing spaces ',
  ],
)
def test_round_trip(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert all(0 <= i < tokenizer.vocab_size for i in ids)


def test_control_tokens_unreachable_from_text(tokenizer):
  specials = {getattr(tokenizer, name) for name in SPECIAL}
  hostile = (
    '<s> premise $ hypothesis <e> <|endoftext|> <pad> <unk> <$> $$ $5 price: $PATH <s><e>$'
  ) * 3
  ids = tokenizer.encode(hostile)
  assert not specials & set(ids)
  assert tokenizer.decode(ids) == hostile
  # A literal "$" is an ordinary piece of the vocabulary, not a byte fallback.
  dollar = tokenizer.encode('$')
  assert dollar == [tokenizer._processor.piece_to_id('$')]


def test_special_ids_are_control_pieces_in_sentencepiece(tokenizer):
  # Checked with sentencepiece's own processor on the saved file.
  processor = spm.SentencePieceProcessor(model_file=str(tokenizer.model_path))
  for name in SPECIAL:
    assert processor.is_control(getattr(tokenizer, name)), name
  assert processor.get_piece_size() == tokenizer.vocab_size == 600
  assert (
    processor.id_to_piece(tokenizer.start_id),
    processor.id_to_piece(tokenizer.extract_id),
  ) == ('<s>', '<e>')


def test_special_ids_stable_and_recorded(tokenizer, tmp_path):
  expected = dict(pad_id=0, eod_id=2, start_id=3, delimiter_id=4, extract_id=5)
  assert tokenizer.special_ids == expected
  record = json.loads(tokenizer_lib.record_path(tokenizer.model_path).read_text())
  assert {k: record[k] for k in expected} == expected
  assert record['vocab_size'] == 600 and record['sha256'] == tokenizer.fingerprint()
  # A different corpus and size still puts the special tokens at the same ids.
  other = tokenizer_lib.train_tokenizer(
    [string.ascii_letters * 20, 'other text ' * 50],
    tmp_path / 'other.model',
    vocab_size=400,
    max_bytes=10**6,
  )
  assert other.special_ids == expected
  # The workdir copy decodes the same ids and carries the record.
  copied = tokenizer_lib.Tokenizer(tokenizer.copy_to(tmp_path / 'workdir'))
  assert copied.decode(tokenizer.encode(DOCUMENTS[1])) == DOCUMENTS[1]
  assert json.loads((tmp_path / 'workdir' / 'tokenizer.json').read_text())['eod_id'] == 2


def test_max_bytes_caps_the_training_text(tmp_path):
  tokenizer = tokenizer_lib.train_tokenizer(
    DOCUMENTS, tmp_path / 'small.model', vocab_size=400, max_bytes=20_000
  )
  record = tokenizer_lib.read_record(tokenizer.model_path)
  assert 0 < record['trained_on_bytes'] <= 20_000


def test_bad_inputs_raise_one_clear_error(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    tokenizer_lib.Tokenizer(tmp_path / 'missing.model')
  with pytest.raises(UserError, match='no text'):
    tokenizer_lib.train_tokenizer(['', '   '], tmp_path / 'empty.model', 300, max_bytes=10**6)
  with pytest.raises(UserError, match='vocab_size'):
    tokenizer_lib.train_tokenizer(['tiny corpus'], tmp_path / 'big.model', 5000, max_bytes=10**6)
  assert not list(tmp_path.glob('*.model'))  # failures write nothing
