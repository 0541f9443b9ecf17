"""The Corpus interface: documents of text with a train and a validation split.

gpt_jax.data.corpora holds the TFDS corpora and `open_corpus`; hf_corpus the
Hugging Face `datasets` ones. Tokenizer training and the token store read any
of them through this interface.
"""

import abc
import re
from collections.abc import Callable, Iterator


class Corpus(abc.ABC):
  """Documents of text with a train and a validation split, readable by range."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """Changes whenever the data can differ."""

  @property
  def slug(self) -> str:
    """`name` as one file-name-safe component."""
    return re.sub(r'[^\w.-]+', '_', self.name)

  @abc.abstractmethod
  def prepare(self) -> None:
    """Makes the documents readable (or fails in one line saying how)."""

  @property
  @abc.abstractmethod
  def split_names(self) -> dict[str, str]:
    """'train' / 'validation' -> where each comes from, for messages and records."""

  @abc.abstractmethod
  def num_documents(self, split: str) -> int:
    """Documents in the split."""

  @abc.abstractmethod
  def documents(
    self, split: str, start: int = 0, stop: int | None = None, batch_size: int = 256
  ) -> Iterator[list[str]]:
    """Documents [start, stop) of the split in stored order, as lists of up to `batch_size`."""

  @abc.abstractmethod
  def identity(self) -> dict:
    """What a token store records to know it was built from exactly this data: name,
    text_key and per split its spec, documents and bytes."""

  def opener(self, reopen: Callable[[], 'Corpus']) -> Callable[[], 'Corpus']:
    """What worker processes call (picklable) to get this corpus: by default `reopen`, which
    opens it again from the config; a corpus that is costly to open hands over itself."""
    return reopen
