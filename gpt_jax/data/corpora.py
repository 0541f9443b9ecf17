"""Text corpora by name, all read the same way: a prepared TFDS dataset's data source.

`config.data.corpus` names one of:

  stdlib_docs   the offline default: docstrings of this Python's standard library.
  local_text    local files matched by data.text_glob (*.txt: one document per file;
                *.jsonl: one per line, in a "text" field).
  any TFDS catalogue dataset, e.g.
    pg19                 books (the closest public stand-in for BooksCorpus); text in "book_text"
    lm1b                 news sentences; "text"
    c4/en                web pages; "text" (TFDS needs Apache Beam to prepare it, and every
                         host a local copy: on a pod give it as hf: parquet files instead)
    wikipedia/20230601.en  articles; "text" (TFDS needs Apache Beam to prepare it)
  hf:NAME[:CONFIG]  a Hugging Face `datasets` dataset (gpt_jax/data/hf_corpus.py): a hub
                name (offline from the local HF cache), a `save_to_disk` directory, or
                parquet / jsonl / csv files (a file, a glob or a directory; local or gs://;
                parquet is read in place, e.g. hf:gs://BUCKET/c4/en/*.parquet).

Catalogue datasets are prepared by TFDS's own builders, in array_record format
(which reads without TensorFlow), on a machine with internet:

    python -c "import tensorflow_datasets as tfds; tfds.builder('pg19', data_dir='DIR',
               file_format='array_record').download_and_prepare()"

or by `gpt-jax tokenizer|prepare ... --config.data.download=True`; then pass
`--config.data.data_dir=DIR`. Nothing is downloaded unless data.download is set.
TFDS's array_record files are read by C++ code that opens local files only, so
when data_dir is a bucket (`gs://...`, where tokenizers and token stores go) the
TFDS datasets are read from data.tfds_dir, a local directory (default: TFDS's
own, ~/tensorflow_datasets); our own corpora are generated there.
Evaluation uses data.validation_split, by default the dataset's 'validation'
or else 'test' split, or else the last validation_fraction of 'train'.
"""

import dataclasses
import difflib
import functools
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

from gpt_jax import workdir as workdir_lib
from gpt_jax.data import hf_corpus
from gpt_jax.data.builders import local_text, stdlib_docs
from gpt_jax.data.corpus import Corpus
from gpt_jax.errors import UserError

# The feature holding the text, for catalogue corpora whose feature is not "text".
TEXT_KEYS = {'pg19': 'book_text'}
_OWN_BUILDERS = {'stdlib_docs': stdlib_docs.StdlibDocs, 'local_text': local_text.LocalText}


def data_dir(data_config) -> epath.Path:
  """data.data_dir (local or a bucket), or TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  return workdir_lib.path(data_config.data_dir or tfds.core.constants.get_default_data_dir())


def tfds_dir(data_config) -> epath.Path:
  """The local directory TFDS datasets are read from: data.tfds_dir, else data_dir when it is
  local, else TFDS's default."""
  chosen = data_config.get('tfds_dir', '') or (
    data_config.data_dir
    if data_config.data_dir and workdir_lib.is_local(data_config.data_dir)
    else ''
  )
  directory = workdir_lib.path(chosen or tfds.core.constants.get_default_data_dir())
  if not workdir_lib.is_local(directory):
    raise UserError(
      f'data.tfds_dir={chosen}: TFDS array_record files can only be read from a '
      'local directory; copy the dataset to a local disk and point tfds_dir there'
    )
  return directory


@dataclasses.dataclass
class TfdsCorpus(Corpus):
  """A TFDS dataset of documents."""

  builder: tfds.core.DatasetBuilder
  text_key: str
  validation_split: str  # '' picks one once the dataset's splits are known
  validation_fraction: float  # held out of 'train' when there is no validation split
  can_download: bool

  @property
  def name(self) -> str:
    """name/config/version: changes whenever the data can differ."""
    return self.builder.info.full_name

  def prepare(self) -> None:
    """Generates our own corpora on first use; catalogue ones only if allowed to download."""
    if not self.builder.is_prepared():
      if not self.can_download:
        raise UserError(
          f'TFDS dataset {self.name} is not prepared in {self.builder.data_dir_root}; prepare '
          'it on a machine with internet with --config.data.download=True (or TFDS, in '
          'array_record format) and point --config.data.data_dir at it'
        )
      self.builder.download_and_prepare()
    if self.builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise UserError(
        f'TFDS dataset {self.name} in {self.builder.data_dir} is stored as '
        f'{self.builder.info.file_format.value}; reading without TensorFlow needs '
        "array_record: prepare it again with file_format='array_record' into "
        'another data_dir'
      )
    for split in ('train', 'validation'):
      if self.num_documents(split) == 0:
        raise UserError(
          f'the {split} split ({self.split_names[split]}) of {self.name} holds no '
          'documents; choose another data.validation_split / validation_fraction'
        )

  @functools.cached_property
  def split_names(self) -> dict[str, str]:
    """'train' / 'validation' -> TFDS split spec such as 'test' or 'train[95%:]' (once prepared)."""
    splits = self.builder.info.splits
    if self.validation_split and self.validation_split not in splits:
      raise UserError(
        f'data.validation_split={self.validation_split!r}: {self.name} has splits '
        f'{", ".join(splits) or "none yet (not prepared)"}'
      )
    validation = self.validation_split or next(
      (split for split in ('validation', 'test') if split in splits), ''
    )
    if validation:
      return {'train': 'train', 'validation': validation}
    held_out = round(100 * self.validation_fraction)
    if not 0 < held_out < 100:
      raise UserError(
        f'data.validation_fraction={self.validation_fraction} must hold out '
        f'between 1% and 99% of {self.name}:train (it has no validation split)'
      )
    return {'train': f'train[:{100 - held_out}%]', 'validation': f'train[{100 - held_out}%:]'}

  def num_documents(self, split: str) -> int:
    return len(self.builder.as_data_source(self.split_names[split]))

  def documents(
    self, split: str, start: int = 0, stop: int | None = None, batch_size: int = 256
  ) -> Iterator[list[str]]:
    source = self.builder.as_data_source(self.split_names[split])
    stop = len(source) if stop is None else stop
    for first in range(start, stop, batch_size):
      records = source.__getitems__(range(first, min(first + batch_size, stop)))
      yield [_as_text(record[self.text_key]) for record in records]

  def identity(self) -> dict:
    """What a token store records to know it was built from exactly this data."""
    splits = {
      split: dict(
        spec=spec,
        documents=self.num_documents(split),
        bytes=self.builder.info.splits[spec].num_bytes,
      )
      for split, spec in self.split_names.items()
    }
    return dict(name=self.name, text_key=self.text_key, splits=splits)


def _as_text(value) -> str:
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def open_corpus(data_config) -> Corpus:
  """The corpus `data_config` names (not yet prepared: call `Corpus.prepare()`)."""
  name, fraction = data_config.corpus, data_config.validation_fraction
  if name.startswith('hf:'):
    return hf_corpus.open_hf_corpus(data_config)
  directory = str(tfds_dir(data_config))
  if name in _OWN_BUILDERS:
    if not 0 < fraction < 1:
      raise UserError(f'data.validation_fraction={fraction} must lie strictly between 0 and 1')
    builder_config = (
      local_text.config(data_config.text_glob, fraction)
      if name == 'local_text'
      else stdlib_docs.config(fraction)
    )
    builder = _OWN_BUILDERS[name](
      config=builder_config, data_dir=directory, file_format='array_record'
    )
    return TfdsCorpus(
      builder, 'text', validation_split='', validation_fraction=fraction, can_download=True
    )
  # tfds registers its text datasets (c4, wikipedia, ...) lazily; this import registers them.

  try:
    builder = tfds.builder(name, data_dir=directory, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.core.registered.list_imported_builders()
    hint = difflib.get_close_matches(name.split('/')[0], known, n=3)
    raise UserError(
      f'data.corpus={name!r} is not a TFDS dataset'
      + (f'; did you mean {", ".join(hint)}?' if hint else '')
      + ' (ours: stdlib_docs, local_text)'
    ) from None
  text_key = data_config.text_key or TEXT_KEYS.get(builder.name, 'text')
  if text_key not in builder.info.features:
    raise UserError(
      f'{builder.name} has no feature {text_key!r} (it has '
      f'{", ".join(builder.info.features)}); set --config.data.text_key'
    )
  return TfdsCorpus(
    builder,
    text_key,
    validation_split=data_config.validation_split,
    validation_fraction=fraction,
    can_download=data_config.download,
  )
