"""Weights & Biases as an optional tracker next to TensorBoard (`pip install "gpt_jax[wandb]"`).

    gpt-jax pretrain --config tiny --workdir W --config.report.wandb_project=gpt1

Process 0 starts one W&B run, logs the whole resolved config once (the run's
hyperparameters) and then every logged step's metrics, named `split/metric`
as in TensorBoard. The run lives in WORKDIR/wandb (a local staging directory
for gs:// workdirs); with WANDB_MODE=offline or report.wandb_mode='offline'
nothing leaves the machine until `wandb sync`.
"""

import tempfile

import jax

from gpt_jax import workdir as workdir_lib


class WandbTracker:
  """One W&B run: `log(step, split, values)` for each logged step, `close()` at the end."""

  def __init__(self, config, workdir):
    import wandb

    report = config.report
    workdir = workdir_lib.path(workdir)
    directory = workdir if workdir_lib.is_local(workdir) else tempfile.mkdtemp(prefix='wandb.')
    self._run = wandb.init(
      project=report.wandb_project,
      entity=report.wandb_entity or None,
      name=report.wandb_name or workdir.name,
      mode=report.wandb_mode or None,
      dir=str(directory),
      config=config.to_dict(),
    )

  def log(self, step: int, split: str, values: dict) -> None:
    numbers = {
      f'{split}/{name}': value
      for name, value in values.items()
      if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if numbers:
      self._run.log(numbers, step=step)

  def close(self) -> None:
    self._run.finish()


def trackers(config, workdir) -> list:
  """The trackers config.report asks for (none on processes other than 0)."""
  report = config.get('report')
  if jax.process_index() != 0 or report is None or not report.wandb_project:
    return []
  return [WandbTracker(config, workdir)]
