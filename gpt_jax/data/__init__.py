"""Data for pretraining: tokenizer, corpora (TFDS builders), token store, grain pipelines.

tokenizer.py  sentencepiece BPE with GPT-1's special tokens
builders/     TFDS builders of our own corpora (stdlib_docs, local_text)
corpora.py    any corpus by name (ours or the TFDS catalogue) as documents
hf_corpus.py  Hugging Face datasets as a corpus (data.corpus=hf:...)
parquet_files.py  an hf: corpus of parquet files read in place (footers, row groups)
store.py      the corpus tokenised once into token shards, in parallel, committed by an index
tokens.py     windows of a split's tokens: memory maps locally, byte ranges in a bucket
pipeline.py   grain: seeded, per-process sharded, checkpointable batches of windows
workflow.py   the steps a run takes, from its config (`gpt-jax tokenizer|prepare|pretrain`)
"""
