"""Corpora as TFDS datasets: local files, the stdlib default, catalogue datasets by name."""

import inspect
import json
import re

import ml_collections
import pytest
import tensorflow_datasets as tfds

from gpt_jax.data import corpora
from gpt_jax.data.builders import stdlib_docs
from gpt_jax.errors import UserError


def data_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  config = dict(
    corpus='local_text',
    text_glob='',
    text_key='',
    validation_split='',
    validation_fraction=0.3,
    data_dir=str(tmp_path / 'tfds'),
    download=False,
  )
  return ml_collections.ConfigDict({**config, **overrides})


def all_documents(corpus, split) -> list[str]:
  return [text for batch in corpus.documents(split, batch_size=3) for text in batch]


def write_corpus(directory) -> list[str]:
  """Six .txt documents and four .jsonl ones; returns their texts."""
  directory.mkdir(parents=True)
  texts = [f'Document {i}: ' + 'words and more words. ' * (i + 1) for i in range(10)]
  for i, text in enumerate(texts[:6]):
    (directory / f'doc{i}.txt').write_text(text, encoding='utf-8')
  lines = [json.dumps({'text': text, 'id': i}) for i, text in enumerate(texts[6:])]
  (directory / 'more.jsonl').write_text('\n'.join(lines[:2]) + '\n\n' + '\n'.join(lines[2:]) + '\n')
  (directory / 'notes.md').write_text('not part of the corpus')
  return texts


def test_local_text_splits_all_documents_deterministically(tmp_path):
  texts = write_corpus(tmp_path / 'corpus')
  splits = []
  for data_dir in ('a', 'b'):  # two independent preparations
    corpus = corpora.open_corpus(
      data_config(tmp_path, text_glob=str(tmp_path / 'corpus'), data_dir=str(tmp_path / data_dir))
    )
    corpus.prepare()
    splits.append(
      {split: sorted(all_documents(corpus, split)) for split in ('train', 'validation')}
    )
  assert splits[0] == splits[1]
  train, validation = splits[0]['train'], splits[0]['validation']
  assert sorted(train + validation) == sorted(texts)  # a partition: nothing lost or repeated
  assert train and validation
  assert corpus.name.startswith('local_text/')


def test_local_text_glob_selects_files(tmp_path):
  texts = write_corpus(tmp_path / 'corpus')
  corpus = corpora.open_corpus(
    data_config(tmp_path, text_glob=str(tmp_path / 'corpus/*.jsonl'), validation_fraction=0.5)
  )
  corpus.prepare()
  found = all_documents(corpus, 'train') + all_documents(corpus, 'validation')
  assert sorted(found) == sorted(texts[6:])


def test_invalid_utf8_is_replaced_and_counted(tmp_path, capsys):
  directory = tmp_path / 'corpus'
  directory.mkdir()
  for i in range(8):
    (directory / f'doc{i}.txt').write_bytes(b'caf\xe9 au lait \xff\xfe ok ' * (i + 1))
  corpus = corpora.open_corpus(data_config(tmp_path, text_glob=str(directory)))
  corpus.prepare()
  # (stderr also holds TFDS's progress bars)
  reported = re.findall(r'warning: replaced (\d+) invalid UTF-8 bytes', capsys.readouterr().err)
  documents = all_documents(corpus, 'train') + all_documents(corpus, 'validation')
  # 3 invalid bytes per repetition, 1 + 2 + ... + 8 = 36 repetitions in all.
  assert sum(text.count('\ufffd') for text in documents) == 3 * 36
  assert len(reported) == 2 and sum(map(int, reported)) == 3 * 36  # one line per split


GOOD_LINES = ''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(10))


@pytest.mark.parametrize(
  'make, pattern, message',
  [
    (lambda d: None, 'missing_dir', 'no such file or directory'),
    (lambda d: None, 'missing_dir/*.txt', 'matches no files'),
    (lambda d: (d / 'a.csv').write_text('x'), '*', 'none ends in .txt or .jsonl'),
    (lambda d: (d / 'a.txt').write_text(''), '*.txt', 'holds no documents'),
    (
      lambda d: (d / 'a.jsonl').write_text(GOOD_LINES + '{"txt": "no"}\n'),
      '*.jsonl',
      r'a.jsonl:11: no "text"',
    ),
    (
      lambda d: (d / 'a.jsonl').write_text(GOOD_LINES + 'not json\n'),
      '*.jsonl',
      r'a.jsonl:11: not a JSON',
    ),
    (lambda d: None, '', 'needs --config.data.text_glob'),
  ],
)
def test_bad_local_input_raises_one_clear_error(tmp_path, make, pattern, message):
  directory = tmp_path / 'corpus'
  directory.mkdir()
  make(directory)
  with pytest.raises(UserError, match=message):
    corpus = corpora.open_corpus(
      data_config(
        tmp_path, text_glob=str(directory / pattern) if pattern else '', validation_fraction=0.5
      )
    )
    corpus.prepare()


def test_single_document_has_no_validation_split(tmp_path):
  (tmp_path / 'book.txt').write_text('one long book ' * 100)
  corpus = corpora.open_corpus(
    data_config(tmp_path, text_glob=str(tmp_path / 'book.txt'), validation_fraction=0.01)
  )
  with pytest.raises(
    UserError, match='validation split .* holds no documents.*validation_fraction'
  ):
    corpus.prepare()


def test_module_docstrings_in_source_order():
  source = b'"""Module doc."""\nclass A:\n  """Class doc."""\n  def f(self):\n    """Method\n    doc."""\ndef g():\n  pass\nasync def h():\n  """Async doc."""\n'
  assert (
    stdlib_docs.module_docstrings(source)
    == 'Module doc.\n\nClass doc.\n\nMethod\ndoc.\n\nAsync doc.'
  )


def test_stdlib_docs_default_corpus(tmp_path):
  corpus = corpora.open_corpus(
    data_config(tmp_path, corpus='stdlib_docs', validation_fraction=0.05)
  )
  corpus.prepare()
  train, validation = all_documents(corpus, 'train'), all_documents(corpus, 'validation')
  size = sum(len(text.encode('utf-8')) for text in train + validation)
  assert 1_000_000 < size < 4_000_000, size
  assert 0.02 < len(validation) / (len(train) + len(validation)) < 0.1
  # The docstring of json, read from the imported module, is one module's document's start.
  assert any(text.startswith(inspect.cleandoc(json.__doc__)) for text in train + validation)
  assert 'cpython' in corpus.name or 'pypy' in corpus.name


class GptJaxTestCatalogue(tfds.core.GeneratorBasedBuilder):
  """Stands in for a TFDS catalogue corpus (pg19, lm1b, ...): registered by name, text in 'body'."""

  VERSION = tfds.core.Version('2.0.0')
  SPLIT_NAMES = ('train', 'test')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {'body': tfds.features.Text(), 'title': tfds.features.Text()}
      ),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.SPLIT_NAMES}

  def _generate_examples(self, split):
    for i in range(20 if split == 'train' else 5):
      yield i, {'body': f'{split} book {i} text', 'title': f'title {i}'}


class GptJaxTestTrainOnly(GptJaxTestCatalogue):
  SPLIT_NAMES = ('train',)


def prepare_catalogue(builder_class, data_dir):
  builder_class(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


def test_catalogue_corpus_by_name(tmp_path):
  prepare_catalogue(GptJaxTestCatalogue, tmp_path / 'tfds')
  corpus = corpora.open_corpus(
    data_config(tmp_path, corpus='gpt_jax_test_catalogue', text_key='body')
  )
  corpus.prepare()
  assert corpus.split_names == {'train': 'train', 'validation': 'test'}
  assert sorted(all_documents(corpus, 'validation')) == sorted(
    f'test book {i} text' for i in range(5)
  )
  assert len(all_documents(corpus, 'train')) == 20


def test_catalogue_corpus_without_validation_holds_out_train(tmp_path):
  prepare_catalogue(GptJaxTestTrainOnly, tmp_path / 'tfds')
  corpus = corpora.open_corpus(
    data_config(
      tmp_path, corpus='gpt_jax_test_train_only', text_key='body', validation_fraction=0.25
    )
  )
  corpus.prepare()
  train, validation = all_documents(corpus, 'train'), all_documents(corpus, 'validation')
  assert (len(train), len(validation)) == (15, 5)
  assert sorted(train + validation) == sorted(f'train book {i} text' for i in range(20))


def test_catalogue_errors(tmp_path):
  with pytest.raises(UserError, match='not a TFDS dataset; did you mean pg19'):
    corpora.open_corpus(data_config(tmp_path, corpus='pg91'))
  with pytest.raises(UserError, match="no feature 'text'.*body"):
    corpora.open_corpus(data_config(tmp_path, corpus='gpt_jax_test_catalogue'))
  with pytest.raises(UserError, match='not prepared.*data.download=True'):
    corpora.open_corpus(data_config(tmp_path, corpus='pg19')).prepare()
