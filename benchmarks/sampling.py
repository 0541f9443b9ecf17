"""Decoding speed: gpt_jax's KV-cache sampler against Hugging Face `generate`.

All contenders decode greedily, float32 on the CPU, in one process, from the
same prompts for the same number of new tokens:
  * gpt_jax: `gpt_jax.sample.generate` on the weights of the model below;
  * hf_openai_gpt: transformers' OpenAIGPTLMHeadModel (random weights, imported
    into gpt_jax with gpt_jax.hf, so both must produce the same tokens). Its
    `generate` has no key/value cache — the model takes no past_key_values, so
    `use_cache=True` is ignored and every step recomputes the whole sequence;
  * hf_gpt2_cached: transformers' GPT2LMHeadModel with the same sizes, which
    does decode with a key/value cache: the fair measure of a cached sampler
    (GPT-2 differs only in LayerNorm placement, the same work per token).
Runs are interleaved, one call of each per round, so all see the same machine
load; each call is timed end to end (prompt in, token ids out, prefill
included) after a warm-up call (which compiles ours).

    python benchmarks/sampling.py [--config small|gpt1|tiny] [--prompt_len 64]
        [--new_tokens 128] [--batch 1] [--rounds 3] [--json out.json]

Prints new tokens/s of each, the ratios gpt_jax / each Hugging Face contender,
and whether gpt_jax and OpenAIGPTLMHeadModel produced the same tokens.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host


def benchmark(args) -> dict:
  import jax
  import numpy as np
  import torch
  import transformers

  from gpt_jax import hf, sample
  from gpt_jax.config import load_config

  torch.set_num_threads(args.torch_threads)
  model = load_config(args.config).model
  if args.prompt_len + args.new_tokens > model.n_ctx:
    raise SystemExit(
      f'--prompt_len {args.prompt_len} + --new_tokens {args.new_tokens} exceeds '
      f'the {args.config} context of {model.n_ctx}'
    )
  torch.manual_seed(0)
  reference = transformers.OpenAIGPTLMHeadModel(
    transformers.OpenAIGPTConfig(
      vocab_size=model.vocab_size,
      n_positions=model.n_ctx,
      n_embd=model.n_embd,
      n_layer=model.n_layer,
      n_head=model.n_head,
      afn='gelu',
      layer_norm_epsilon=model.layer_norm_epsilon,
    )
  ).eval()
  params, model_config = hf.params_from_hf(reference)
  params = jax.device_put(params)
  cached_reference = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=model.vocab_size,
      n_positions=model.n_ctx,
      n_embd=model.n_embd,
      n_layer=model.n_layer,
      n_head=model.n_head,
      n_inner=model.d_ff,
      activation_function='gelu_new',
      layer_norm_epsilon=model.layer_norm_epsilon,
      bos_token_id=None,
      eos_token_id=None,
    )
  ).eval()
  prompts = (
    np.random.default_rng(0)
    .integers(0, model.vocab_size, (args.batch, args.prompt_len))
    .astype(np.int64)
  )

  def ours():
    return sample.generate(params, model_config, prompts.tolist(), args.new_tokens, temperature=0)

  def hugging_face(hf_model):
    def run():
      with torch.inference_mode():
        out = hf_model.generate(
          torch.from_numpy(prompts),
          max_new_tokens=args.new_tokens,
          min_new_tokens=args.new_tokens,
          do_sample=False,
          use_cache=True,
          pad_token_id=0,
        )
      return out[:, args.prompt_len :].tolist()

    return run

  contenders = {
    'gpt_jax': ours,
    'hf_openai_gpt': hugging_face(reference),
    'hf_gpt2_cached': hugging_face(cached_reference),
  }
  first_tokens, first_call_s = {}, {}
  for name, run in contenders.items():  # warm-up; ours compiles here
    start = time.perf_counter()
    first_tokens[name] = run()
    first_call_s[name] = time.perf_counter() - start
  timings = {name: [] for name in contenders}
  for _ in range(args.rounds):
    for name, run in contenders.items():
      start = time.perf_counter()
      run()
      timings[name].append(time.perf_counter() - start)
  new_tokens = args.batch * args.new_tokens
  results = {
    name: dict(
      seconds=statistics.median(t), tokens_per_s=new_tokens / statistics.median(t), all_seconds=t
    )
    for name, t in timings.items()
  }
  ours_per_s = results['gpt_jax']['tokens_per_s']
  return dict(
    config=args.config,
    model=dict(model),
    batch=args.batch,
    prompt_len=args.prompt_len,
    new_tokens=args.new_tokens,
    rounds=args.rounds,
    first_call_s=first_call_s,
    cpu_threads=os.cpu_count(),
    torch_threads=args.torch_threads,
    results=results,
    same_tokens_as_hf_openai_gpt=first_tokens['gpt_jax'] == first_tokens['hf_openai_gpt'],
    ratios={
      f'gpt_jax / {name}': ours_per_s / r['tokens_per_s']
      for name, r in results.items()
      if name != 'gpt_jax'
    },
    versions=dict(
      jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__
    ),
  )


def _print(report):
  m = report['model']
  print(
    f'{report["config"]} ({m["n_layer"]} layers, {m["n_embd"]} wide, vocab '
    f'{m["vocab_size"]}): batch {report["batch"]}, prompt {report["prompt_len"]} tokens, '
    f'{report["new_tokens"]} new tokens, greedy, float32, {report["cpu_threads"]} CPU cores, '
    f'{report["torch_threads"]} torch threads'
  )
  for name, r in report['results'].items():
    print(
      f'  {name:15s} {r["tokens_per_s"]:9,.1f} new tokens/s  ({r["seconds"]:.3f} s per call, '
      f'median of {report["rounds"]})'
    )
  for name, ratio in report['ratios'].items():
    print(f'  ratio {name}: {ratio:.2f}x')
  print(
    f'  gpt_jax and OpenAIGPTLMHeadModel chose the same tokens: '
    f'{report["same_tokens_as_hf_openai_gpt"]}'
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--config', default='small', help='config name from configs/ (small; gpt1 is the paper size)'
  )
  parser.add_argument('--prompt_len', type=int, default=64)
  parser.add_argument('--new_tokens', type=int, default=128)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--rounds', type=int, default=3, help='timed calls per contender')
  # One token at a time is latency-bound: on a shared CPU, extra intra-op threads
  # mostly wait for each other (here 1 thread ran Hugging Face ~10x faster than 2).
  parser.add_argument(
    '--torch_threads',
    type=int,
    default=1,
    help=f'PyTorch intra-op threads (default 1; this machine has {os.cpu_count()})',
  )
  parser.add_argument('--json', help='also write the results to this JSON file')
  args = parser.parse_args()
  report = benchmark(args)
  _print(report)
  if args.json:
    Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == '__main__':
  main()
