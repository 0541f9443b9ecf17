"""Peak memory and FLOPs per chip of every remat policy, from the TPU dry run (no TPU needed).

    python benchmarks/remat_table.py --config configs/gpt1_v5e_8.py --topology v5e:2x4
    python benchmarks/remat_table.py --config configs/gpt_1p5b_v5e_64.py --topology v5e:8x8

Each policy is one ahead-of-time compilation through libtpu (pip install
"gpt_jax[tpu]"); config overrides (--config.model.scan_layers=False) apply to all.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

from gpt_jax import config as config_lib  # noqa: E402
from gpt_jax import dryrun  # noqa: E402
from gpt_jax.model import REMAT_POLICIES  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--topology', required=True)
  parser.add_argument(
    '--policies',
    default=','.join(REMAT_POLICIES),
    help='comma-separated model.remat values; default all',
  )
  args, rest = parser.parse_known_args()
  unknown = [arg for arg in rest if not (arg.startswith('--config.') and '=' in arg)]
  if unknown:
    parser.error(f'unrecognised arguments {unknown}; overrides look like --config.a.b=value')
  overrides = [arg[len('--config.') :] for arg in rest]
  config = config_lib.load_config(args.config, overrides)
  reports = dryrun.remat_reports(config, args.topology, args.policies.split(','))
  print(dryrun.remat_table(config, args.topology, reports), flush=True)


if __name__ == '__main__':
  main()
