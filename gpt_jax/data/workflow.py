"""The data steps of a run, driven by its config: train a tokenizer, prepare a store, read batches.

    gpt-jax tokenizer --config configs/tiny.py   ->  train_tokenizer(config)
    gpt-jax prepare   --config configs/tiny.py   ->  prepare(config)
    gpt-jax prepare   --config ... --verify      ->  verify(config)
    gpt-jax pretrain  --config configs/tiny.py   ->  pretrain_data(config)

Unless data.tokenizer / data.store name them, the tokenizer lives in
`{data_dir}/gpt_jax_tokenizers/{corpus}-bpe{vocab}.model` and the store in
`{data_dir}/gpt_jax_token_stores/{corpus}-{tokenizer hash}/`: a different
corpus, vocabulary size or tokenizer never reuses the wrong files. Every one of
these paths may be in a bucket (`gs://...`).

In a multi-process run (`--num_processes N`, or every worker of a TPU pod
slice) the steps cooperate: process 0 trains the tokenizer while the others
wait; every process tokenises its share of the store's shards; process 0
commits the store.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable

import grain
import jax
import numpy as np
import tqdm
from etils import epath

from gpt_jax import distributed
from gpt_jax import workdir as workdir_lib
from gpt_jax.data import checksums, corpora, pipeline
from gpt_jax.data import store as store_lib
from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.data.corpus import Corpus
from gpt_jax.errors import UserError, warn


def tokenizer_path(config, corpus: Corpus) -> epath.Path:
  if config.data.tokenizer:
    return workdir_lib.path(config.data.tokenizer)
  return (
    corpora.data_dir(config.data)
    / 'gpt_jax_tokenizers'
    / f'{corpus.slug}-bpe{config.model.vocab_size}.model'
  )


def store_path(config, corpus: Corpus, tokenizer: tokenizer_lib.Tokenizer) -> epath.Path:
  if config.data.store:
    return workdir_lib.path(config.data.store)
  return (
    corpora.data_dir(config.data)
    / 'gpt_jax_token_stores'
    / f'{corpus.slug}-{tokenizer.fingerprint()[:12]}'
  )


def train_tokenizer(config, log: Callable[[str], None] = print) -> tokenizer_lib.Tokenizer:
  """Trains a BPE tokenizer of model.vocab_size pieces on the corpus's train split, or reuses
  the one already trained with the same corpus and size. Several processes: process 0
  trains, the others wait for it and load the result."""
  corpus = corpora.open_corpus(config.data)
  path = tokenizer_path(config, corpus)
  workdir_lib.check_writable(
    path.parent, 'tokenizer directory'
  )  # every process: each fails in one line
  corpus.prepare()
  if jax.process_index() == 0:
    tokenizer = _train_or_reuse_tokenizer(config, corpus, path, log)
  distributed.barrier('gpt_jax_tokenizer_trained')
  return tokenizer if jax.process_index() == 0 else tokenizer_lib.Tokenizer(path)


def _train_or_reuse_tokenizer(
  config, corpus: Corpus, path: epath.Path, log: Callable[[str], None]
) -> tokenizer_lib.Tokenizer:
  vocab_size, max_bytes = config.model.vocab_size, config.data.tokenizer_max_bytes
  description = f'{corpus.name}:{corpus.split_names["train"]}'
  record = tokenizer_lib.read_record(path)
  if (
    path.is_file()
    and record
    and record.get('trained_on') == description
    and record.get('vocab_size') == vocab_size
  ):
    log(f'reusing tokenizer {path} ({vocab_size:,} pieces, trained on {description})')
    return tokenizer_lib.Tokenizer(path)
  log(
    f'training a {vocab_size:,}-piece BPE tokenizer on up to {max_bytes:,} bytes of {description}'
  )
  documents = (text for batch in corpus.documents('train') for text in batch)
  with tqdm.tqdm(unit='B', unit_scale=True, desc='reading text', dynamic_ncols=True) as progress:
    tokenizer = tokenizer_lib.train_tokenizer(
      documents, path, vocab_size, max_bytes=max_bytes, description=description, progress=progress
    )
  record = tokenizer_lib.read_record(path)
  assert record is not None, path  # train_tokenizer writes it beside the model
  log(
    f'wrote {path} in {record["training_seconds"]}s: {tokenizer.vocab_size:,} pieces; ids '
    + ', '.join(f'{name} {value}' for name, value in tokenizer.special_ids.items())
  )
  return tokenizer


def _load_tokenizer(config, corpus: Corpus) -> tokenizer_lib.Tokenizer:
  path = tokenizer_path(config, corpus)
  if not path.is_file():
    raise UserError(
      f'no tokenizer at {path}; train it with `gpt-jax tokenizer` and the same '
      'config flags, or set --config.data.tokenizer=PATH'
    )
  tokenizer = tokenizer_lib.Tokenizer(path)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise UserError(
      f'tokenizer {path} has {tokenizer.vocab_size:,} pieces but '
      f'model.vocab_size={config.model.vocab_size}; set '
      f'--config.model.vocab_size={tokenizer.vocab_size}'
    )
  return tokenizer


def prepare(config, log: Callable[[str], None] = print) -> store_lib.TokenStore:
  """Tokenises the corpus into its token store (reused when corpus and tokenizer are unchanged),
  with data.prepare_workers local processes (0: one per core), each JAX process writing its
  share of the shards."""
  corpus = corpora.open_corpus(config.data)
  corpus.prepare()
  tokenizer = _load_tokenizer(config, corpus)
  directory = store_path(config, corpus, tokenizer)
  workdir_lib.check_writable(directory, 'token store')  # every process: none waits for a failed one
  workers = config.data.prepare_workers or os.cpu_count() or 1  # cpu_count: None when unknown
  start = time.perf_counter()
  store, reused = store_lib.build_store(
    directory,
    corpus,
    tokenizer,
    open_corpus=corpus.opener(functools.partial(corpora.open_corpus, config.data)),
    shard_mb=config.data.shard_mb,
    workers=workers,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    barrier=distributed.barrier,
    show_progress=jax.process_index() == 0,
    log=log,
  )
  if jax.process_index() == 0:
    seconds = time.perf_counter() - start
    speed = (
      ''
      if reused
      else (
        f' in {seconds:.1f}s: {sum(store.num_tokens(s) for s in store_lib.SPLITS) / seconds:,.0f} '
        f'tokens/s with {jax.process_count()} x {workers} workers'
      )
    )
    log(
      f'{"reusing" if reused else "wrote"} token store {directory} ({corpus.name}){speed}\n'
      + store_lib.describe(store)
    )
  return store


def verify(config, log: Callable[[str], None] = print) -> store_lib.TokenStore:
  """Checks the config's prepared store (sizes, block checksums, token ids), changing nothing;
  each JAX process reads its share of the shards. Damage is one line naming the shards."""
  corpus = corpora.open_corpus(config.data)
  directory = store_path(config, corpus, _load_tokenizer(config, corpus))
  store = store_lib.TokenStore(directory)
  if not store.has_checksums:
    raise UserError(f'token store {directory} {_WITHOUT_CHECKSUMS}: run `gpt-jax prepare` again')
  records = store.shard_records()[jax.process_index() :: jax.process_count()]
  problems = store.damage(records)
  if problems:
    raise UserError(
      f'token store {directory}: {len(problems)} of {len(records)} shards damaged ('
      + '; '.join(f'{problem.name} {problem.what}' for problem in problems)
      + f'); {checksums.REPAIR}'
    )
  size = sum(record['tokens'] for record in records) * store.dtype.itemsize
  log(
    f'token store {directory}: {len(records)} shards ({size / 2**20:,.1f} MiB) intact '
    '(sizes, crc32c block checksums and token ids checked)'
  )
  return store


_WITHOUT_CHECKSUMS = 'was written before token stores had block checksums'


def reader_threads(config, batch_size: int, local: bool) -> int:
  """grain reader threads: data.num_threads, or for a store in a bucket enough threads (each
  waiting on one batch's round trip) to keep data.read_concurrency requests in flight."""
  if local:
    return config.data.num_threads
  # Configs saved before data.read_concurrency existed resume with its default.
  wanted = -(-config.data.get('read_concurrency', 256) // batch_size)
  return max(config.data.num_threads, min(wanted, 16))


@dataclasses.dataclass
class PretrainData:
  """What the pretraining loop consumes, for this JAX process."""

  tokenizer: tokenizer_lib.Tokenizer
  store: store_lib.TokenStore
  train_batches: grain.DatasetIterator  # endless; get_state() / set_state() for checkpoints
  eval_batches: Callable[[], Iterable[np.ndarray]]  # a fresh pass over the validation batches
  train_tokens: int  # size of the train split, for train.num_epochs


def pretrain_data(config) -> PretrainData:
  """Batches of this process's share of train.batch_size windows of train.seq_len + 1 tokens
  from the prepared store (and the tokenizer, to copy into the run's workdir)."""
  corpus = corpora.open_corpus(config.data)
  tokenizer = _load_tokenizer(config, corpus)
  directory = store_path(config, corpus, tokenizer)
  store = store_lib.TokenStore(directory)  # fails on a missing or incomplete store
  if store.meta['tokenizer_sha256'] != tokenizer.fingerprint():
    raise UserError(
      f'token store {directory} was built with another tokenizer '
      f'({store.meta["tokenizer"]}); run `gpt-jax prepare` again'
    )
  if not store.has_checksums:
    warn(
      f'token store {directory} {_WITHOUT_CHECKSUMS}, so its reads are not verified; '
      '`gpt-jax prepare` rebuilds it with them'
    )
  process_count, batch_size = jax.process_count(), config.train.batch_size
  if batch_size % process_count:
    raise UserError(
      f'train.batch_size={batch_size} must be a multiple of the number of JAX '
      f'processes ({process_count})'
    )
  shard = dict(
    seq_len=config.train.seq_len,
    batch_size=batch_size // process_count,
    process_index=jax.process_index(),
    process_count=process_count,
  )
  train = pipeline.train_batches(
    store.tokens('train'),
    seed=config.data.seed,
    num_threads=reader_threads(config, shard['batch_size'], workdir_lib.is_local(directory)),
    **shard,
  )
  evaluation = pipeline.eval_batches(
    store.tokens('validation'), num_batches=config.train.eval_batches, **shard
  )
  return PretrainData(tokenizer, store, train, lambda: evaluation, store.num_tokens('train'))
