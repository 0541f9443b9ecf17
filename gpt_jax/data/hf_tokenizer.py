"""Hugging Face tokenizers behind gpt_jax's tokenizer interface, and finding a directory's tokenizer.

`HFTokenizer` wraps a `tokenizers.Tokenizer`, read from any of:
  * `tokenizer.json` (any Hugging Face tokenizer);
  * GPT-1's BPE as published: `vocab.json` + `merges.txt` (Hugging Face's
    openai-gpt) or `encoder_bpe_40000.json` + `vocab_40000.bpe` (OpenAI's
    release; the same two tables under other names).

GPT-1's BPE is built exactly as transformers' `OpenAIGPTTokenizer` builds it:
BERT's normaliser (clean control characters, lower-case, strip accents, space
out CJK characters), BERT's pre-tokenizer (split on whitespace and
punctuation), then BPE with a `</w>` end-of-word suffix. That is the "basic
tokenizer" path; OpenAI's release and older transformers first ran ftfy and
spaCy's English tokenizer when both were installed. Transformers 5 dropped that
path, and spaCy's model cannot be installed offline, so we match the one
Hugging Face runs today.

The fine-tuning tokens `<s>`, `<$>`, `<e>` are added after the vocabulary when
the tokenizer lacks them (as the paper added them to GPT-1's 40,478), as special
tokens that raw text never produces: the wrapped tokenizer encodes special
tokens' spellings as ordinary text (`encode_special_tokens`).
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from etils import epath
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from gpt_jax import workdir as workdir_lib
from gpt_jax.data import tokenizer as sentencepiece_lib
from gpt_jax.errors import UserError

TOKENIZER_JSON = 'tokenizer.json'
TOKENIZER_CONFIG = 'tokenizer_config.json'
# GPT-1's BPE tables: (vocabulary, merges) as Hugging Face and as OpenAI named them.
BPE_FILE_PAIRS = (('vocab.json', 'merges.txt'), ('encoder_bpe_40000.json', 'vocab_40000.bpe'))
END_OF_WORD = '</w>'
FINETUNE_TOKENS = (sentencepiece_lib.START, sentencepiece_lib.DELIMITER, sentencepiece_lib.EXTRACT)
# Spellings of an end-of-document token, in the order we look for one.
_EOD_TOKENS = (sentencepiece_lib.EOD, '</s>')


class HFTokenizer(sentencepiece_lib.TextTokenizer):
  """A Hugging Face `tokenizers.Tokenizer` with GPT-1's fine-tuning tokens.

  Padding (needed by task batches, never read by the model) uses `<pad>` when
  the tokenizer has one, else `<e>`: the paper added no padding token, and
  every padded position follows `<e>` and is masked out.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, model_path):
    self.model_path = workdir_lib.path(model_path)
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # ours to change
    self.text_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    missing = [token for token in FINETUNE_TOKENS if self._tokenizer.token_to_id(token) is None]
    self._tokenizer.add_special_tokens(
      [tokenizers.AddedToken(token, special=True, normalized=False) for token in missing]
    )
    self._tokenizer.encode_special_tokens = True  # "<s>" in text is three ordinary characters
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def added_id(token: str) -> int:
      token_id = self._tokenizer.token_to_id(token)
      assert token_id is not None, token  # every fine-tuning token was added above
      return token_id

    self.start_id, self.delimiter_id, self.extract_id = map(added_id, FINETUNE_TOKENS)
    pad_id = self._tokenizer.token_to_id(sentencepiece_lib.PAD)
    self.pad_id = self.extract_id if pad_id is None else pad_id
    self.eod_id = next(
      (
        self._tokenizer.token_to_id(token)
        for token in _EOD_TOKENS
        if self._tokenizer.token_to_id(token) is not None
      ),
      None,
    )

  @property
  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    """`encode` over many texts (the Rust library spreads them over the CPUs itself)."""
    return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, token_id: int) -> str:
    piece = self._tokenizer.id_to_token(int(token_id))
    if piece is None:  # as sentencepiece does, rather than a None piece
      raise IndexError(f'token id {token_id} is out of range (vocab_size {self.vocab_size})')
    return piece

  def fingerprint(self) -> str:
    return hashlib.sha256(self._tokenizer.to_str().encode('utf-8')).hexdigest()

  def copy_to(self, directory) -> epath.Path:
    """Writes `tokenizer.json` (with the fine-tuning tokens) into `directory`."""
    directory = workdir_lib.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / TOKENIZER_JSON
    target.write_text(self._tokenizer.to_str(pretty=True))
    return target


def gpt1_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
  """GPT-1's BPE pipeline (see the module docstring) over a vocabulary and its merges."""
  unk = '<unk>' if '<unk>' in vocab else None
  tokenizer = tokenizers.Tokenizer(
    BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD, unk_token=unk, fuse_unk=False)
  )
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
  return tokenizer


def read_gpt1_bpe(vocab_file, merges_file) -> HFTokenizer:
  """GPT-1's BPE from its vocabulary JSON and merges file (a '#version' line, then 'a b' pairs)."""
  vocab_file, merges_file = workdir_lib.path(vocab_file), workdir_lib.path(merges_file)
  try:
    vocab = json.loads(vocab_file.read_text(encoding='utf-8'))
  except json.JSONDecodeError as error:
    raise UserError(f'{vocab_file} is not valid JSON ({error})') from None
  merges = []
  for number, line in enumerate(merges_file.read_text(encoding='utf-8').splitlines(), 1):
    if line.startswith('#version') or not line.strip():
      continue
    pair = line.split(' ')
    if len(pair) != 2:
      raise UserError(f'{merges_file} line {number} is not a merge "a b": {line[:40]!r}')
    merges.append(tuple(pair))
  try:
    return HFTokenizer(gpt1_bpe(vocab, merges), vocab_file)
  except Exception as error:  # tokenizers raises plain Exceptions for inconsistent tables
    raise UserError(
      f'{vocab_file} and {merges_file} do not make a BPE tokenizer ({error})'
    ) from None


def read_tokenizer_json(path) -> HFTokenizer:
  path = workdir_lib.path(path)
  try:
    return HFTokenizer(tokenizers.Tokenizer.from_str(path.read_text(encoding='utf-8')), path)
  except Exception as error:  # tokenizers raises plain Exceptions for unreadable files
    raise UserError(f'{path} is not a Hugging Face tokenizer.json ({error})') from None


def tokenizer_in(directory) -> sentencepiece_lib.TextTokenizer | None:
  """The tokenizer a weights directory holds, or None.

  Looked for in this order: our sentencepiece `tokenizer.model`,
  `tokenizer.json`, GPT-1's vocab.json + merges.txt, OpenAI's
  encoder_bpe_40000.json + vocab_40000.bpe.
  """
  directory = workdir_lib.path(directory)
  if (directory / workdir_lib.TOKENIZER_FILE).is_file():
    return sentencepiece_lib.Tokenizer(directory / workdir_lib.TOKENIZER_FILE)
  if (directory / TOKENIZER_JSON).is_file():
    return read_tokenizer_json(directory / TOKENIZER_JSON)
  for vocab_name, merges_name in BPE_FILE_PAIRS:
    if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
      return read_gpt1_bpe(directory / vocab_name, directory / merges_name)
  return None


def from_sentencepiece(tokenizer: sentencepiece_lib.Tokenizer) -> tokenizers.Tokenizer:
  """Our sentencepiece BPE as an equivalent Hugging Face tokenizer (same ids for any text).

  The vocabulary and piece order carry over; merges are rebuilt from the pieces
  (a piece's merges rank by the piece's id, which is sentencepiece's BPE merge
  order); unseen characters fall back to UTF-8 byte pieces, as in sentencepiece.
  Control pieces become special added tokens.
  """
  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  vocab = {piece: i for i, piece in enumerate(pieces)}
  special = [sentencepiece_lib.PAD, sentencepiece_lib.UNK, *sentencepiece_lib.CONTROL_PIECES]
  ranked: list[tuple[int, int, int, str, str]] = []  # (piece, left, right ids), left, right
  for piece in set(pieces) - set(special):
    splits = [
      (piece[:cut], piece[cut:])
      for cut in range(1, len(piece))
      if piece[:cut] in vocab and piece[cut:] in vocab
    ]
    ranked += [(vocab[piece], vocab[a], vocab[b], a, b) for a, b in splits]
  merges = [(a, b) for *_, a, b in sorted(ranked)]
  hf = tokenizers.Tokenizer(
    BPE(
      vocab=vocab, merges=merges, unk_token=sentencepiece_lib.UNK, fuse_unk=True, byte_fallback=True
    )
  )
  hf.normalizer = normalizers.Replace(' ', '\u2581')
  # sentencepiece's words (allow_whitespace_only_pieces): a run of spaces and what follows it.
  hf.pre_tokenizer = pre_tokenizers.Split(
    tokenizers.Regex('\u2581*[^\u2581]+|\u2581+'), behavior='isolated'
  )
  hf.decoder = decoders.Sequence(
    [decoders.Replace('\u2581', ' '), decoders.ByteFallback(), decoders.Fuse()]
  )
  hf.add_special_tokens(
    [tokenizers.AddedToken(token, special=True, normalized=False) for token in special]
  )
  return hf


def as_hf(tokenizer: sentencepiece_lib.TextTokenizer) -> tokenizers.Tokenizer:
  """Any of our tokenizers as a Hugging Face one (for export)."""
  if isinstance(tokenizer, HFTokenizer):
    return tokenizer.hf_tokenizer
  assert isinstance(tokenizer, sentencepiece_lib.Tokenizer), type(tokenizer)  # the only other kind
  return from_sentencepiece(tokenizer)


def tokenizer_config(tokenizer: sentencepiece_lib.TextTokenizer) -> dict:
  """tokenizer_config.json for `AutoTokenizer`: a fast tokenizer with our special tokens.

  `split_special_tokens` makes Hugging Face encode "<s>" in raw text as text, as we do.
  """
  names = {
    key: tokenizer.id_to_piece(value)
    for key, value in tokenizer.special_ids.items()
    if value is not None
  }
  config = {
    'tokenizer_class': 'PreTrainedTokenizerFast',
    'model_max_length': int(1e30),
    'pad_token': names['pad_id'],
    'bos_token': names['start_id'],
    'cls_token': names['extract_id'],
    'sep_token': names['delimiter_id'],
    'split_special_tokens': True,
  }
  if 'eod_id' in names:
    config['eos_token'] = names['eod_id']
  return config


def write_for_hf(tokenizer: sentencepiece_lib.TextTokenizer, directory: Path) -> None:
  """tokenizer.json + tokenizer_config.json, which `AutoTokenizer.from_pretrained` reads."""
  (directory / TOKENIZER_JSON).write_text(as_hf(tokenizer).to_str(pretty=True))
  (directory / TOKENIZER_CONFIG).write_text(
    json.dumps(tokenizer_config(tokenizer), indent=2) + '\n'
  )
