"""The tokenizer interface, sentencepiece BPE with GPT-1's special tokens, and training it.

`TextTokenizer` is what the rest of gpt_jax reads tokenizers through: text to
ids and back, the special ids, a fingerprint and `copy_to` a workdir. It has two
implementations: `Tokenizer` below (our own sentencepiece model) and
`gpt_jax.data.hf_tokenizer.HFTokenizer` (any Hugging Face tokenizer, GPT-1's
own BPE included).

The vocabulary reserves, as sentencepiece *control* pieces, padding,
end-of-document and the three fine-tuning tokens of the paper: start `<s>`,
delimiter (the paper's `$`, spelled `<$>` here) and extract `<e>`. Control
pieces are never produced by encoding text, so raw text containing "<s>", "$"
or "<e>" encodes to ordinary pieces; only code that asks for `start_id` etc.
can place them. (The delimiter is spelled `<$>` because "$" itself must stay an
ordinary character that merges like any other.)

The model normalises nothing (no NFKC, whitespace kept, no dummy prefix) and
falls back to UTF-8 bytes for unseen characters, so `decode(encode(text)) ==
text` for any text without the U+2581 character sentencepiece uses for spaces.

Every `.model` file has a `.json` beside it recording the special-token ids,
the vocabulary size and what it was trained on.
"""

import abc
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from etils import epath

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError

PAD, UNK, EOD, START, DELIMITER, EXTRACT = '<pad>', '<unk>', '<|endoftext|>', '<s>', '<$>', '<e>'
# Fixed ids: pad 0, unk 1, then the control pieces in this order (2..5).
CONTROL_PIECES = (EOD, START, DELIMITER, EXTRACT)
# sentencepiece skips training "sentences" longer than this many bytes; we cut
# documents into paragraphs below it (see `_sentences`).
MAX_SENTENCE_BYTES = 16384


class TextTokenizer(abc.ABC):
  """Text to ids and back, with GPT-1's fine-tuning tokens.

  `start_id`, `delimiter_id` and `extract_id` (the paper's `<s>`, `$`, `<e>`)
  are never produced by `encode`, whatever the text. `eod_id` separates
  documents in a token stream; it is None for tokenizers without one (GPT-1's
  BPE). `vocab_size` counts every id, special ones included; `text_vocab_size`
  only those `encode` can produce, which a model's embedding must cover.
  """

  vocab_size: int
  text_vocab_size: int
  pad_id: int
  eod_id: int | None
  start_id: int
  delimiter_id: int
  extract_id: int
  model_path: epath.Path  # the file it was read from

  @property
  def special_ids(self) -> dict[str, int | None]:
    return dict(
      pad_id=self.pad_id,
      eod_id=self.eod_id,
      start_id=self.start_id,
      delimiter_id=self.delimiter_id,
      extract_id=self.extract_id,
    )

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ordinary ids only: special ids are unreachable from text."""

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    return [self.encode(text) for text in texts]

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special tokens decode to nothing."""

  @abc.abstractmethod
  def id_to_piece(self, token_id: int) -> str: ...

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """sha256 of the tokenizer's file: token stores built with it record this."""

  @abc.abstractmethod
  def copy_to(self, directory: str | epath.Path) -> epath.Path:
    """Writes the tokenizer into `directory` (a workdir), where `gpt_jax.weights` finds it."""


class Tokenizer(TextTokenizer):
  """Encodes text to ids and back with a trained sentencepiece model file."""

  def __init__(self, model_path: str | epath.Path):
    self.model_path = workdir_lib.path(model_path)  # may be in a bucket workdir
    if not self.model_path.is_file():
      raise UserError(
        f'tokenizer model {self.model_path} does not exist; train one with '
        '`gpt-jax tokenizer --config ...` or set --config.data.tokenizer=PATH'
      )
    # Bytes, not a file name: sentencepiece reads local files only.
    self._processor = spm.SentencePieceProcessor(model_proto=self.model_path.read_bytes())
    self.vocab_size = self.text_vocab_size = self._processor.get_piece_size()
    self.pad_id = self._control_id(PAD)
    self.eod_id, self.start_id, self.delimiter_id, self.extract_id = map(
      self._control_id, CONTROL_PIECES
    )

  def _control_id(self, piece: str) -> int:
    token_id = self._processor.piece_to_id(piece)
    if self._processor.id_to_piece(token_id) != piece or not self._processor.is_control(token_id):
      raise UserError(
        f'tokenizer {self.model_path} has no control piece {piece!r}; it was not '
        'trained by `gpt-jax tokenizer` (retrain it)'
      )
    return token_id

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    """`encode` over many texts, in parallel C++ threads (0: one per CPU)."""
    return self._processor.encode(list(texts), num_threads=num_threads or os.cpu_count())

  def decode(self, ids: Iterable[int]) -> str:
    return self._processor.decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._processor.id_to_piece(int(token_id))

  def fingerprint(self) -> str:
    return hashlib.sha256(self.model_path.read_bytes()).hexdigest()

  def copy_to(self, directory: str | epath.Path) -> epath.Path:
    """Copies the model and its id record into `directory` (a workdir) as tokenizer.*."""
    directory = workdir_lib.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / workdir_lib.TOKENIZER_FILE
    self.model_path.copy(target, overwrite=True)
    record_path(self.model_path).copy(record_path(target), overwrite=True)
    return target


def record_path(model_path: str | epath.Path) -> epath.Path:
  """The JSON beside a .model file that records its special ids and provenance."""
  return workdir_lib.path(model_path).with_suffix('.json')


def read_record(model_path: str | epath.Path) -> dict | None:
  path = record_path(model_path)
  return json.loads(path.read_text()) if path.is_file() else None


def _sentences(document: str) -> Iterable[str]:
  """Cuts a document into paragraphs sentencepiece accepts, keeping their newlines."""
  for paragraph in document.split('\n\n'):
    while len(paragraph.encode('utf-8')) > MAX_SENTENCE_BYTES:
      cut = paragraph.rfind('\n', 0, MAX_SENTENCE_BYTES // 4)
      cut = cut if cut > 0 else MAX_SENTENCE_BYTES // 4  # 4 bytes per character at most
      yield paragraph[:cut]
      paragraph = paragraph[cut:]
    if paragraph.strip():
      yield paragraph


def train_tokenizer(
  documents: Iterable[str],
  model_path: str | epath.Path,
  vocab_size: int,
  *,
  max_bytes: int,
  description: str = '',
  progress=None,
  num_threads: int = 0,
) -> Tokenizer:
  """Trains a BPE model of `vocab_size` pieces on up to `max_bytes` of `documents`.

  The vocabulary is 6 special pieces, 256 byte-fallback pieces, the characters
  of the text and then merges. Writes `model_path` and its `.json` record
  atomically (nothing is written if training fails). `progress` (e.g. a tqdm
  bar) is advanced by the bytes read.
  """
  model_path = workdir_lib.path(model_path)
  corpus_bytes = 0

  def sentences():
    nonlocal corpus_bytes
    for document in documents:
      for sentence in _sentences(document):
        size = len(sentence.encode('utf-8'))
        if corpus_bytes + size > max_bytes:
          return
        corpus_bytes += size
        if progress is not None:
          progress.update(size)
        yield sentence

  model = io.BytesIO()
  start = time.perf_counter()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=sentences(),
      model_writer=model,
      model_type='bpe',
      vocab_size=vocab_size,
      pad_id=0,
      unk_id=1,
      bos_id=-1,
      eos_id=-1,
      pad_piece=PAD,
      unk_piece=UNK,
      control_symbols=list(CONTROL_PIECES),
      normalization_rule_name='identity',
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      byte_fallback=True,
      character_coverage=1.0,
      max_sentence_length=MAX_SENTENCE_BYTES,
      input_sentence_size=0,
      num_threads=num_threads or os.cpu_count(),
      minloglevel=2,
    )
  except RuntimeError as error:
    if corpus_bytes == 0:
      raise UserError(
        f'no text to train the tokenizer on ({description or "empty corpus"})'
      ) from None
    reason = str(error).split('] ')[-1]  # drop sentencepiece's source location
    raise UserError(
      f'sentencepiece could not train {vocab_size} pieces on {corpus_bytes:,} bytes '
      f'of {description or "text"}: {reason} (set --config.model.vocab_size)'
    ) from None
  model_path.parent.mkdir(parents=True, exist_ok=True)
  if workdir_lib.is_local(
    model_path
  ):  # an object in a bucket appears whole or not at all; a file does not
    partial = model_path.with_name(model_path.name + '.partial')
    partial.write_bytes(model.getvalue())
    partial.replace(model_path)
  else:
    model_path.write_bytes(model.getvalue())
  tokenizer = Tokenizer(model_path)
  record = dict(
    vocab_size=tokenizer.vocab_size,
    **tokenizer.special_ids,
    pieces={
      name: tokenizer.id_to_piece(i) for name, i in tokenizer.special_ids.items() if i is not None
    },
    model_type='bpe',
    trained_on=description,
    trained_on_bytes=corpus_bytes,
    training_seconds=round(time.perf_counter() - start, 1),
    sha256=tokenizer.fingerprint(),
  )
  record_path(model_path).write_text(json.dumps(record, indent=2) + '\n')
  return tokenizer
