"""The token store: a corpus tokenised once, read as flat token arrays many times.

A store is a directory:

  train.bin, validation.bin   every document's tokens followed by end-of-document,
                              concatenated, as little-endian uint16 (uint32 for
                              vocabularies over 65,536); memory-mapped when read.
  counts.npy                  per-split token counts (unigram statistics).
  meta.json                   dtype, sizes, and the fingerprint of the corpus and
                              tokenizer it was built from. Written last: a store
                              without it is incomplete.

`build_store` reuses a complete store whose fingerprint matches, so
re-running `gpt-jax prepare` on the same input costs nothing.
"""

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import tqdm

from gpt_jax.data.corpora import Corpus
from gpt_jax.data.tokenizer import Tokenizer
from gpt_jax.errors import UserError

FORMAT_VERSION = 1
SPLITS = ('train', 'validation')


def fingerprint(corpus_identity: dict, tokenizer: Tokenizer) -> str:
  """Hash of everything the tokens depend on: the corpus, the tokenizer, this format."""
  description = json.dumps(dict(format=FORMAT_VERSION, corpus=corpus_identity,
                                tokenizer=tokenizer.fingerprint()), sort_keys=True)
  return hashlib.sha256(description.encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype('<u2') if vocab_size <= 2**16 else np.dtype('<u4')


def unigram_entropy(counts: np.ndarray) -> float:
  """Entropy in nats of the token frequency distribution `counts` (the best loss of a
  model that ignores context)."""
  counts = np.asarray(counts, np.float64)
  probabilities = counts[counts > 0] / counts.sum()
  return float(-(probabilities * np.log(probabilities)).sum())


class TokenStore:
  """A complete store on disk; `tokens(split)` is a read-only memory map."""

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    meta_path = self.directory / 'meta.json'
    if not meta_path.is_file():
      raise UserError(f'no token store in {self.directory}; build it with '
                      '`gpt-jax prepare --config ...`')
    self.meta = json.loads(meta_path.read_text())
    self.dtype = np.dtype(self.meta['dtype'])

  def num_tokens(self, split: str) -> int:
    return self.meta['splits'][split]['tokens']

  def tokens(self, split: str) -> np.ndarray:
    if self.num_tokens(split) == 0:
      return np.zeros(0, self.dtype)
    return np.memmap(self.directory / f'{split}.bin', self.dtype, mode='r',
                     shape=(self.num_tokens(split),))

  def counts(self, split: str) -> np.ndarray:
    return np.load(self.directory / 'counts.npy')[SPLITS.index(split)]

  def unigram_entropy(self, splits=SPLITS) -> float:
    """Unigram entropy (nats) of the given splits' tokens together."""
    return unigram_entropy(sum(self.counts(split) for split in splits))


def build_store(directory: str | Path, corpus: Corpus, tokenizer: Tokenizer,
                show_progress: bool = True, num_threads: int = 0) -> tuple[TokenStore, bool]:
  """Tokenises the (prepared) corpus into `directory`; returns the store and whether it was
  reused. Writes into a sibling directory and renames it, so an interrupted run leaves
  nothing behind that looks complete."""
  directory = Path(directory)
  expected = fingerprint(corpus.identity(), tokenizer)
  if (directory / 'meta.json').is_file():
    store = TokenStore(directory)
    if store.meta.get('fingerprint') == expected:
      return store, True
  partial = directory.with_name(directory.name + '.partial')
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  dtype = token_dtype(tokenizer.vocab_size)
  splits, counts = {}, []
  for split in SPLITS:
    splits[split], split_counts = _write_split(partial / f'{split}.bin', corpus, split, tokenizer,
                                               dtype, show_progress, num_threads)
    counts.append(split_counts)
  np.save(partial / 'counts.npy', np.stack(counts))
  for split, split_counts in zip(SPLITS, counts):
    splits[split]['unigram_entropy_nats'] = round(unigram_entropy(split_counts), 6)
  meta = dict(format=FORMAT_VERSION, fingerprint=expected, corpus=corpus.name,
              tokenizer=str(tokenizer.model_path), tokenizer_sha256=tokenizer.fingerprint(),
              vocab_size=tokenizer.vocab_size, eod_id=tokenizer.eod_id, dtype=dtype.str,
              splits=splits)
  (partial / 'meta.json').write_text(json.dumps(meta, indent=2) + '\n')
  shutil.rmtree(directory, ignore_errors=True)
  partial.rename(directory)
  return TokenStore(directory), False


def _write_split(path: Path, corpus: Corpus, split: str, tokenizer: Tokenizer, dtype: np.dtype,
                 show_progress: bool, num_threads: int) -> tuple[dict, np.ndarray]:
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  documents = tokens = text_bytes = 0
  eod = np.array([tokenizer.eod_id], dtype)
  with open(path, 'wb') as file, tqdm.tqdm(
      total=corpus.num_documents(split), unit='doc', desc=f'tokenizing {split}',
      disable=not show_progress, dynamic_ncols=True) as progress:
    for batch_texts in corpus.documents(split):
      progress.update(len(batch_texts))
      texts = [text for text in batch_texts if text.strip()]
      if not texts:
        continue
      pieces = []
      for ids in tokenizer.encode_batch(texts, num_threads):
        pieces += [np.asarray(ids, dtype), eod]
      batch = np.concatenate(pieces)
      batch.tofile(file)
      counts += np.bincount(batch, minlength=tokenizer.vocab_size)
      documents += len(texts)
      tokens += batch.size
      text_bytes += sum(len(text.encode('utf-8')) for text in texts)
      progress.set_postfix(tokens=f'{tokens:,}', refresh=False)
  bytes_per_token = text_bytes / max(tokens - documents, 1)
  return dict(documents=documents, tokens=tokens, text_bytes=text_bytes,
              bytes_per_token=round(bytes_per_token, 3)), counts


def describe(store: TokenStore) -> str:
  """One line per split: documents, tokens, unigram entropy."""
  lines = []
  for split in SPLITS:
    info = store.meta['splits'][split]
    lines.append(f'{split}: {info["documents"]:,} documents, {info["tokens"]:,} tokens '
                 f'({info["bytes_per_token"]} bytes/token), unigram entropy '
                 f'{info["unigram_entropy_nats"]:.3f} nats (perplexity '
                 f'{math.exp(info["unigram_entropy_nats"]):,.0f})')
  return '\n'.join(lines)
