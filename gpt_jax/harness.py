"""Our model in EleutherAI's lm-evaluation-harness (`pip install "gpt_jax[eval]"`).

    python -m gpt_jax.harness --model gpt_jax --model_args init=WORKDIR --tasks lambada_openai
    lm_eval.simple_evaluate(model=GptJaxLM(init='hf:openai-community/openai-gpt'), tasks=[...])

`init` is anything `--init` takes (a gpt_jax workdir, a Hugging Face directory,
OpenAI's release, hf:ORG/NAME). Model arguments: batch_size (rows per batch),
max_length (the scoring window; default the model's context).

lm-eval 0.4.13 finds models only in its own registry: importing this module
registers "gpt_jax" there, and `python -m gpt_jax.harness` is the `lm_eval`
command with it registered. pyproject.toml also declares the class under the
"lm_eval.models" entry point, which releases with plugin discovery read.

All three request types run on our jitted code: `loglikelihood` and
`loglikelihood_rolling` on `gpt_jax.scoring` (batched, on the device mesh),
`generate_until` on the KV-cache sampler (`gpt_jax.sample`).
"""

import collections

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gpt_jax import evaluation, sample, sharding, zero_shot
from gpt_jax.errors import UserError
from gpt_jax.scoring import Scorer, score_continuations
from gpt_jax.weights import load_weights

_DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generation tasks


@register_model('gpt_jax')
class GptJaxLM(TemplateLM):
  """An lm-eval `LM` over our model and tokenizer."""

  def __init__(
    self,
    init: str,
    batch_size: int | str | None = 8,
    max_length: int | str = 0,
    max_batch_size: int | None = None,
    device: str | None = None,
    **unused,
  ):
    super().__init__()
    if unused:
      raise UserError(
        f'model_args {sorted(unused)} are unknown to gpt_jax; it takes init, batch_size, max_length'
      )
    self.weights = load_weights(init, flag='init')
    self._tokenizer = self.weights.text_tokenizer()
    self.max_length = int(max_length) or self.weights.model_config.n_ctx
    batch = 8 if batch_size in (None, 'auto') else int(str(batch_size).split(':')[0])
    self.batch_size = batch
    self._scorer = Scorer(
      self.weights.params,
      self.weights.model_config,
      sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)),
      batch,
      self.max_length,
    )

  @property
  def eot_token_id(self) -> int:
    return zero_shot.prefix_id(self._tokenizer)

  def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
    return self._tokenizer.encode(string)

  def tok_decode(self, ids) -> str:
    return self._tokenizer.decode(ids)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """((context, continuation), context ids, continuation ids) -> (log-likelihood, greedy)."""
    scored = score_continuations(
      self._scorer, [(context, continuation) for _, context, continuation in requests]
    )
    results = [(total, greedy) for total, _, greedy in scored]
    for (pair, _, _), result in zip(requests, results):
      if pair is not None:
        self.cache_hook.add_partial('loglikelihood', pair, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text's total log-likelihood, every token scored once after the prefix token, in
    windows of max_length that do not overlap (as lm-eval's own models do)."""
    pieces, owners = [], []
    for index, request in enumerate(requests):
      tokens = [self.eot_token_id] + self.tok_encode(request.args[0])
      for start, first, count in evaluation.strided_windows(
        len(tokens), self.max_length, self.max_length
      ):
        split = start + first + 1
        pieces.append((tokens[start:split], tokens[split : split + count]))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (total, _, _) in zip(owners, score_continuations(self._scorer, pieces)):
      totals[owner] += total
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or sampled, with temperature > 0) continuations cut at the first stop string."""
    groups = collections.defaultdict(list)  # one compiled decoder per setting
    for index, request in enumerate(requests):
      context, kwargs = request.args
      settings = (
        int(kwargs.get('max_gen_toks', _DEFAULT_MAX_GEN_TOKS)),
        float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample') else 0.0,
      )
      groups[settings].append((index, context, _stop_strings(kwargs)))
    results = [''] * len(requests)
    for (max_new, temperature), members in groups.items():
      room = self.max_length - max_new  # prompts keep their last tokens
      if room < 1:
        raise UserError(
          f'max_gen_toks={max_new} leaves no room for a prompt in the '
          f'{self.max_length}-token context'
        )
      for begin in range(0, len(members), self.batch_size):
        chunk = members[begin : begin + self.batch_size]
        prompts = [
          self.tok_encode(context)[-room:] or [self.eot_token_id] for _, context, _ in chunk
        ]
        stop = [] if self._tokenizer.eod_id is None else [self._tokenizer.eod_id]
        assert self.weights.params is not None  # the harness loads trained weights
        outputs = sample.generate(
          self.weights.params,
          self.weights.model_config,
          prompts,
          max_new,
          temperature=temperature,
          stop_tokens=stop,
        )
        for (index, _, until), ids in zip(chunk, outputs):
          results[index] = _cut(self.tok_decode(ids), until)
          self.cache_hook.add_partial('generate_until', requests[index].args, results[index])
    return results


def _stop_strings(kwargs: dict) -> list[str]:
  until = kwargs.get('until') or []
  return [until] if isinstance(until, str) else list(until)


def _cut(text: str, until) -> str:
  """`text` up to the first occurrence of any stop string."""
  for stop in until:
    if stop:
      text = text.split(stop)[0]
  return text


if __name__ == '__main__':
  from lm_eval.__main__ import cli_evaluate

  cli_evaluate()
