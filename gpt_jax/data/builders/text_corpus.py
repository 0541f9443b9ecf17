"""The shape shared by our local corpora: documents of text, a deterministic validation split.

Each builder is a TFDS `GeneratorBasedBuilder` written as array_record files,
read back through `as_data_source` — no TensorFlow needed. A document goes to
the validation split when a hash of its key (its file path, or path:line)
falls below `validation_fraction`: the split depends on nothing else, so it is
the same on every machine and stable when documents are added.
"""

import abc
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from gpt_jax.errors import UserError

SPLITS = ('train', 'validation')


def _is_expected_tfds_notice(record: logging.LogRecord) -> bool:
  """TFDS's warnings that are no news for corpora generated here: our configs are made at run
  time (from a glob, this interpreter's version), so TFDS warns about a "custom data
  configuration" with its whole repr each run, and it warns about the variant folder of a
  corpus not generated yet, just before generating it."""
  message = record.getMessage()
  return message.startswith('Using custom data configuration') or (
    message.startswith('Variant folder') and message.endswith('has no dataset_info.json')
  )


logging.getLogger('absl').addFilter(lambda record: not _is_expected_tfds_notice(record))


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
  validation_fraction: float = 0.05


def key_hash(key: str) -> float:
  """A fixed hash of a document's key, uniform in [0, 1): the same on every machine."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def is_validation(key: str, fraction: float) -> bool:
  """Whether the document with this key is held out."""
  return key_hash(key) < fraction


# mypy sees tfds's classes as Any and checks the keyword against object's __init_subclass__.
class TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
  """Builders yield (key, text) pairs from `_documents(split)`; this class routes and stores them."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  # TFDS looks for download checksums beside a builder's code; ours download
  # nothing, and that lookup needs the importlib_resources backport.
  code_path = None

  def download_and_prepare(self, *args, **kwargs) -> None:
    """Generates the corpus from local text with one line before and one after, in place of
    TFDS's download notice (nothing is downloaded) and its per-split progress bars."""
    start = time.perf_counter()
    tqdm_utils.disable_progress_bar()
    try:
      super().download_and_prepare(*args, **kwargs)
    finally:
      tqdm_utils.enable_progress_bar()
    documents = sum(split.num_examples for split in self.info.splits.values())
    print(
      f'generated the {self.name} corpus ({self.builder_config.description}): '
      f'{documents:,} documents in {time.perf_counter() - start:.1f}s'
    )

  def _log_download_bytes(self) -> None:
    print(f'generating the {self.name} corpus from local text into {self.data_dir}')

  def _log_download_done(self) -> None:
    """download_and_prepare says it, with the counts."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    fraction, found = self.builder_config.validation_fraction, 0
    for key, text in self._documents(
      lambda key: is_validation(key, fraction) == (split == 'validation')
    ):
      if text.strip():
        found += 1
        yield key, {'text': text}
    if not found:  # TFDS cannot store an empty split: say why it is empty
      raise UserError(
        f'the {split} split of {self.name} ({self.builder_config.description}) holds no '
        'documents with text'
        + (
          ''
          if split == 'train'
          else f'; with data.validation_fraction={fraction} none was held '
          'out: raise it or add documents (local_text: more .txt files, '
          'or .jsonl with one document per line)'
        )
      )

  @abc.abstractmethod
  def _documents(self, wanted) -> Iterator[tuple[str, str]]:
    """(key, text) of every document whose key satisfies `wanted(key)`."""
