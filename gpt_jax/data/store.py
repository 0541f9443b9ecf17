"""The token store: a corpus tokenised once, in shards, read as windows by every host.

A store is a directory, local or in a bucket (`gs://...`):

  train-00000.bin, ...        shard k of a split: the tokens of a fixed range of its
  validation-00000.bin, ...   documents, each followed by end-of-document, as
                              little-endian uint16 (uint32 for vocabularies over
                              65,536). A split is its shards concatenated.
  train-00000.json, ...       written after its shard: document range, sizes,
                              unigram counts, the crc32c of every MiB block of the
                              shard (gpt_jax.data.checksums) and the store's
                              fingerprint, so an interrupted prepare redoes only
                              missing shards.
  counts.npy                  per-split token counts (unigram statistics).
  index.json                  the shards, sizes, block checksums and the fingerprint of
                              the corpus and tokenizer. Written last: it commits the
                              store, and a directory without it is never read.

Shard boundaries depend on the corpus only (about `shard_mb` MiB of text each),
never on who wrote them: 1 process, N processes (each writes every N-th shard) or
W local worker processes all produce the same files, byte for byte.
`build_store` reuses a complete store whose fingerprint matches once every shard
passed its size and checksum check, and rebuilds only the shards that failed.
Stores written before checksums (format 2) are still read, unverified, with a warning.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
from collections.abc import Callable

import numpy as np
import tqdm

from gpt_jax import workdir as workdir_lib
from gpt_jax.data import checksums as checksums_lib
from gpt_jax.data import tokens as tokens_lib
from gpt_jax.data.corpus import Corpus
from gpt_jax.data.tokenizer import Tokenizer
from gpt_jax.errors import UserError

FORMAT_VERSION = 3  # 3: block checksums
SPLITS = ('train', 'validation')
INDEX = 'index.json'


def fingerprint(corpus_identity: dict, tokenizer: Tokenizer) -> str:
  """Hash of everything the tokens depend on: the corpus, the tokenizer, this format."""
  description = json.dumps(
    dict(format=FORMAT_VERSION, corpus=corpus_identity, tokenizer=tokenizer.fingerprint()),
    sort_keys=True,
  )
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
  """A complete (indexed) store; `tokens(split)` reads windows without copying the files."""

  def __init__(self, directory):
    self.directory = workdir_lib.path(directory)
    index = self.directory / INDEX
    if not index.is_file():
      state = (
        'is incomplete (no index.json: its prepare did not finish)'
        if self.directory.is_dir()
        else 'does not exist'
      )
      raise UserError(
        f'token store {self.directory} {state}; build it with '
        '`gpt-jax prepare --config ...` and the same config flags'
      )
    self.meta = json.loads(index.read_text())
    self.dtype = np.dtype(self.meta['dtype'])
    self.has_checksums = 'checksum_block_bytes' in self.meta  # stores before format 3: none

  def num_tokens(self, split: str) -> int:
    return self.meta['splits'][split]['tokens']

  def tokens(self, split: str, filesystem=None, verify: bool = True):
    """A reader of the split's windows: memory maps when local, range requests in a bucket
    (`filesystem` replaces the fsspec filesystem); `verify=False` (to measure what
    verifying costs) skips the block checksums."""
    shards = self.meta['splits'][split]['shards']
    return tokens_lib.open_tokens(
      [self.directory / shard['file'] for shard in shards],
      [shard['tokens'] for shard in shards],
      self.dtype,
      filesystem,
      checksums=[checksums_lib.decode(shard['crc32c']) for shard in shards]
      if self.has_checksums and verify
      else None,
      vocab_size=self.meta['vocab_size'],
      block_bytes=self.meta.get('checksum_block_bytes', checksums_lib.BLOCK_BYTES),
    )

  def damage(self, records: list[dict]) -> list[checksums_lib.DamagedShard]:
    """What is wrong with each of the shards `records` (index entries): sizes and checksums,
    every byte read once."""
    problems = [
      checksums_lib.check_file(
        self.directory / record['file'],
        record['tokens'] * self.dtype.itemsize,
        record['crc32c'],
        self.dtype,
        self.meta['vocab_size'],
        self.meta['checksum_block_bytes'],
      )
      for record in records
    ]
    return [problem for problem in problems if problem is not None]

  def shard_records(self) -> list[dict]:
    """Every shard's index entry, splits in order."""
    return [record for split in SPLITS for record in self.meta['splits'][split]['shards']]

  def counts(self, split: str) -> np.ndarray:
    with (self.directory / 'counts.npy').open('rb') as file:
      return np.load(file)[SPLITS.index(split)]

  def unigram_entropy(self, splits=SPLITS) -> float:
    """Unigram entropy (nats) of the given splits' tokens together."""
    return unigram_entropy(np.sum([self.counts(split) for split in splits], axis=0))


def is_complete(directory) -> bool:
  return (workdir_lib.path(directory) / INDEX).is_file()


@dataclasses.dataclass(frozen=True)
class Shard:
  """Documents [start, stop) of a split, stored as `{name}.bin` and described by `{name}.json`."""

  split: str
  number: int
  start: int
  stop: int

  @property
  def name(self) -> str:
    return f'{self.split}-{self.number:05d}'


def plan_shards(corpus: Corpus, shard_mb: float) -> list[Shard]:
  """Every split cut into ranges of documents holding about `shard_mb` MiB of text each."""
  shards = []
  for split, info in corpus.identity()['splits'].items():
    documents, text_bytes = info['documents'], max(info['bytes'] or 0, 1)
    count = max(1, min(documents, math.ceil(text_bytes / (shard_mb * 2**20))))
    bounds = [round(k * documents / count) for k in range(count + 1)]
    shards += [Shard(split, k, bounds[k], bounds[k + 1]) for k in range(count)]
  return shards


@dataclasses.dataclass(frozen=True)
class BuildSpec:
  """What a worker process needs to tokenise shards: all picklable."""

  open_corpus: Callable[[], Corpus]
  tokenizer_path: str
  directory: str
  fingerprint: str
  num_threads: int  # sentencepiece threads per worker (0: one per CPU)


def build_store(
  directory,
  corpus: Corpus,
  tokenizer: Tokenizer,
  *,
  open_corpus=None,
  shard_mb: float = 256,
  workers: int = 1,
  process_index: int = 0,
  process_count: int = 1,
  barrier: Callable[[str], None] = lambda name: None,
  show_progress: bool = True,
  log: Callable[[str], None] = print,
) -> tuple[TokenStore, bool]:
  """Tokenises the (prepared) corpus into `directory`; returns the store and whether it was
  reused. A complete store for the same corpus and tokenizer is verified first (each
  process its share of the shards) and only its damaged shards are rebuilt (`log` says which).

  Process `process_index` of `process_count` writes every `process_count`-th shard,
  spread over `workers` local processes (which reopen the corpus with `open_corpus`,
  a picklable callable). `barrier(name)` must return once every process reached it;
  then process 0 writes the index.
  """
  directory = workdir_lib.path(directory)
  expected = fingerprint(corpus.identity(), tokenizer)
  shards = plan_shards(corpus, shard_mb)
  if is_complete(directory):
    store = TokenStore(directory)
    if store.meta.get('fingerprint') == expected:
      _drop_damaged_shards(store, store.shard_records()[process_index::process_count], log)
      barrier('gpt_jax_store_verified')  # the records every process reads next are final
      records = [directory / r['file'] for r in store.shard_records()]
      if all(path.with_suffix('.json').is_file() for path in records):  # none was damaged
        return store, True
  barrier('gpt_jax_store_checked')  # nobody reads the old index after this
  if process_index == 0:
    (directory / INDEX).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
  barrier('gpt_jax_store_open')
  spec = BuildSpec(
    open_corpus,
    str(tokenizer.model_path),
    str(directory),
    expected,
    num_threads=0 if workers <= 1 else 1,
  )
  _write_shards(
    spec, shards[process_index::process_count], workers, corpus, tokenizer, show_progress
  )
  barrier('gpt_jax_store_shards_written')
  if process_index == 0:
    _write_index(directory, corpus, tokenizer, shards, expected)
  barrier('gpt_jax_store_indexed')
  return TokenStore(directory), False


def _write_shards(
  spec: BuildSpec,
  shards: list[Shard],
  workers: int,
  corpus: Corpus,
  tokenizer: Tokenizer,
  show_progress: bool,
) -> None:
  with tqdm.tqdm(
    total=sum(s.stop - s.start for s in shards),
    unit='doc',
    desc='tokenizing',
    disable=not show_progress,
    dynamic_ncols=True,
  ) as progress:
    if workers <= 1 or len(shards) <= 1:
      for shard in shards:
        _tokenize_shard(spec, shard, corpus, tokenizer)
        progress.update(shard.stop - shard.start)
      return
    # spawn: the parent may hold JAX's and gcsfs's threads, which fork would copy mid-flight.
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
      min(workers, len(shards)), mp_context=context
    ) as pool:
      for shard in pool.map(_tokenize_shard_in_worker, [spec] * len(shards), shards):
        progress.update(shard.stop - shard.start)


_WORKER_INPUTS: dict = {}  # per worker process: store fingerprint -> (corpus, tokenizer)


def _tokenize_shard_in_worker(spec: BuildSpec, shard: Shard) -> Shard:
  if spec.fingerprint not in _WORKER_INPUTS:
    _WORKER_INPUTS[spec.fingerprint] = (spec.open_corpus(), Tokenizer(spec.tokenizer_path))
  _tokenize_shard(spec, shard, *_WORKER_INPUTS[spec.fingerprint])
  return shard


def _drop_damaged_shards(store: TokenStore, records: list[dict], log: Callable[[str], None]):
  """Deletes the files and records of the damaged shards among `records`, so they are rebuilt."""
  for problem in store.damage(records):
    log(f'token store {store.directory}: rebuilding shard {problem.name} ({problem.what})')
    (store.directory / problem.name).unlink(missing_ok=True)
    (store.directory / problem.name).with_suffix('.json').unlink(missing_ok=True)


def _record_is_current(directory, shard: Shard, expected: str) -> bool:
  """Whether `shard`'s record describes the shard this store's corpus and tokenizer make."""
  record_path = directory / f'{shard.name}.json'
  if not record_path.is_file():
    return False
  record = json.loads(record_path.read_text())
  wanted = dict(fingerprint=expected, start=shard.start, stop=shard.stop)
  return {key: record.get(key) for key in wanted} == wanted


def _tokenize_shard(spec: BuildSpec, shard: Shard, corpus: Corpus, tokenizer: Tokenizer) -> None:
  """Writes `{shard}.bin`, then its record; skips a shard already written for this store."""
  directory = workdir_lib.path(spec.directory)
  if _record_is_current(directory, shard, spec.fingerprint):
    return
  dtype = token_dtype(tokenizer.vocab_size)
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  documents = tokens = text_bytes = 0
  eod = np.array([tokenizer.eod_id], dtype)
  hasher = checksums_lib.BlockHasher()
  with (directory / f'{shard.name}.bin').open('wb') as file:
    for batch_texts in corpus.documents(shard.split, shard.start, shard.stop):
      texts = [text for text in batch_texts if text.strip()]
      if not texts:
        continue
      ids = tokenizer.encode_batch(texts, spec.num_threads)
      batch = np.concatenate([piece for row in ids for piece in (np.asarray(row, dtype), eod)])
      file.write(data := batch.tobytes())
      hasher.update(data)
      counts += np.bincount(batch, minlength=tokenizer.vocab_size)
      documents, tokens = documents + len(texts), tokens + batch.size
      text_bytes += sum(len(text.encode('utf-8')) for text in texts)
  (directory / f'{shard.name}.json').write_text(
    json.dumps(
      dict(
        fingerprint=spec.fingerprint,
        start=shard.start,
        stop=shard.stop,
        file=f'{shard.name}.bin',
        documents=documents,
        tokens=tokens,
        text_bytes=text_bytes,
        crc32c=hasher.hexdigest(),
        counts=counts.tolist(),
      )
    )
  )


def _write_index(
  directory, corpus: Corpus, tokenizer: Tokenizer, shards: list[Shard], expected: str
) -> None:
  """Sums the shard records into counts.npy and index.json (last: the commit)."""
  records = {shard: json.loads((directory / f'{shard.name}.json').read_text()) for shard in shards}
  if any(record['fingerprint'] != expected for record in records.values()):
    raise UserError(
      f'token store {directory}: a shard was written for another corpus or '
      'tokenizer while this one was prepared; run `gpt-jax prepare` again'
    )
  splits, counts = {}, []
  for split in SPLITS:
    mine = [records[shard] for shard in shards if shard.split == split]
    split_counts = np.sum([np.asarray(r['counts'], np.int64) for r in mine], axis=0)
    documents, tokens = sum(r['documents'] for r in mine), sum(r['tokens'] for r in mine)
    text_bytes = sum(r['text_bytes'] for r in mine)
    splits[split] = dict(
      documents=documents,
      tokens=tokens,
      text_bytes=text_bytes,
      bytes_per_token=round(text_bytes / max(tokens - documents, 1), 3),
      unigram_entropy_nats=round(unigram_entropy(split_counts), 6),
      shards=[{key: r[key] for key in ('file', 'documents', 'tokens', 'crc32c')} for r in mine],
    )
    counts.append(split_counts)
  with (directory / 'counts.npy').open('wb') as file:
    np.save(file, np.stack(counts))
  meta = dict(
    format=FORMAT_VERSION,
    fingerprint=expected,
    corpus=corpus.name,
    tokenizer=str(tokenizer.model_path),
    tokenizer_sha256=tokenizer.fingerprint(),
    vocab_size=tokenizer.vocab_size,
    eod_id=tokenizer.eod_id,
    dtype=token_dtype(tokenizer.vocab_size).str,
    checksum_block_bytes=checksums_lib.BLOCK_BYTES,
    splits=splits,
  )
  (directory / INDEX).write_text(json.dumps(meta, indent=2) + '\n')


def describe(store: TokenStore) -> str:
  """One line per split: documents, tokens, unigram entropy."""
  lines = []
  for split in SPLITS:
    info = store.meta['splits'][split]
    lines.append(
      f'{split}: {info["documents"]:,} documents, {info["tokens"]:,} tokens '
      f'in {len(info["shards"])} shards ({info["bytes_per_token"]} bytes/token), '
      f'unigram entropy {info["unigram_entropy_nats"]:.3f} nats (perplexity '
      f'{math.exp(info["unigram_entropy_nats"]):,.0f})'
    )
  return '\n'.join(lines)
