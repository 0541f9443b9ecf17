"""XLA_FLAGS for the test processes: the fake CPU devices, and a quicker CPU compile.

The suite compiles hundreds of small programs and runs each for a few steps, so it spends
more time in XLA's LLVM optimizations than in the programs they speed up. Level 0 halves a
tiny model's compile and changes no test's outcome: every comparison is between processes
that share these flags, or against references (numpy float64, Hugging Face) held to
tolerances, never against numbers from another optimization level.
"""

QUICK_COMPILE = '--xla_backend_optimization_level=0'


def cpu_devices(count: int) -> str:
  """XLA_FLAGS for a test process with `count` host CPU devices."""
  return f'--xla_force_host_platform_device_count={count} {QUICK_COMPILE}'
