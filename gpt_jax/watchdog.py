"""A training loop's watchdog: a run that stops making progress ends, loudly, so it restarts.

The loop tells the watchdog what it is doing before each piece of work (`pet('train step
40')`, `pet('saving checkpoint 40')`, ...). A daemon thread checks on it:

- When nothing new has started for `hang_timeout_s` seconds (a storage request that never
  answers, a collective waiting for a host that hangs), it writes every thread's stack to
  stderr, then one line, `gpt-jax: error: no progress for N s while <what>; ...`, and exits
  with HUNG_EXIT_CODE (3) at once: the main thread is stuck and cannot unwind. A scheduler
  that restarts a worker exiting non-zero resumes the run from its last checkpoint.
- After SIGTERM (a preemption notice) it gives the loop `grace_s` seconds to save and end;
  if the process is still there then, it does the same. The signal reaches it through
  Python's wakeup fd, written by the C-level handler even while the main thread is blocked
  in a call that never returns (so the Python handler never runs). This needs a Python
  SIGTERM handler, which `checkpoint.PreemptionWatch` installs in a one-process run; in a
  multi-process run JAX's preemption service owns SIGTERM and the hang timeout covers it.

Once armed by SIGTERM the grace timer outlives the loop: whatever runs after it (the last
save's upload, the run's summary) must end within the grace period too.
"""

import faulthandler
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

HUNG_EXIT_CODE = 3
_RESTART = 'rerun the same command (a scheduler: restart it) to resume from the last checkpoint'


class Watchdog:
  """Ends the process when the loop makes no progress, or outlives a SIGTERM's grace period.

  `hang_timeout_s` 0 turns the hang check off; `grace_s` 0 turns the grace timer off.
  `stream` and `exit` are where the report goes and how the process ends (stderr and
  os._exit by default; a test may pass its own).
  """

  def __init__(
    self,
    hang_timeout_s: float,
    grace_s: float,
    *,
    stream: IO[str] | None = None,
    exit: Callable[[int], object] = os._exit,  # noqa: A002 -- what it is
  ):
    self.hang_timeout_s, self.grace_s = float(hang_timeout_s), float(grace_s)
    self._stream, self._exit = stream, exit
    self._last = (time.monotonic(), 'starting')  # (when, what): replaced whole, never mutated
    self._sigterm_at: float | None = None
    self._stopped = threading.Event()
    self._pipe: tuple[int, int] | None = None
    self._previous_wakeup_fd = -1
    self._thread: threading.Thread | None = None

  @property
  def active(self) -> bool:
    return self.hang_timeout_s > 0 or self.grace_s > 0

  def pet(self, doing: str) -> None:
    """Progress: the loop starts `doing` (e.g. 'train step 40') now."""
    self._last = (time.monotonic(), doing)

  def sigterm(self) -> None:
    """Starts the grace period (called on SIGTERM; the wakeup fd calls it too)."""
    if self._sigterm_at is None:
      self._sigterm_at = time.monotonic()

  def __enter__(self) -> 'Watchdog':
    if not self.active:
      return self
    self.pet('starting')
    if self.grace_s > 0 and threading.current_thread() is threading.main_thread():
      read, write = os.pipe()
      os.set_blocking(write, False)
      self._pipe = (read, write)
      self._previous_wakeup_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, daemon=True, name='gpt-jax-watchdog')
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    """Stops the hang check; a grace period SIGTERM started keeps running (see the module)."""
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_wakeup_fd)
    self._stopped.set()

  def _watch(self) -> None:
    tick = min(1.0, max(0.05, min(t for t in (self.hang_timeout_s, self.grace_s) if t > 0) / 20))
    while True:
      self._wait_for_signal(tick)
      now = time.monotonic()
      when, doing = self._last
      if self._sigterm_at is not None and self.grace_s > 0:
        if now - self._sigterm_at >= self.grace_s:
          self._fail(
            f'SIGTERM {self.grace_s:g} s ago (train.preemption_grace_s) and the run has not '
            f'stopped, stuck while {doing}; exiting without saving: {_RESTART}'
          )
          return
      elif self._stopped.is_set():
        break
      elif self.hang_timeout_s > 0 and now - when >= self.hang_timeout_s:
        self._fail(
          f'no progress for {now - when:.0f} s while {doing} (train.hang_timeout_s='
          f'{self.hang_timeout_s:g}); the stacks of every thread are above; exiting with code '
          f'{HUNG_EXIT_CODE}: {_RESTART}'
        )
        return
    self._close_pipe()

  def _wait_for_signal(self, seconds: float) -> None:
    if self._pipe is None or self._stopped.is_set():
      time.sleep(seconds)
      return
    ready, _, _ = select.select([self._pipe[0]], [], [], seconds)
    if ready and signal.SIGTERM in os.read(self._pipe[0], 512):
      self.sigterm()

  def _close_pipe(self) -> None:
    if self._pipe is not None:
      for fd in self._pipe:
        os.close(fd)
      self._pipe = None

  def _fail(self, message: str) -> None:
    stream = self._stream or sys.__stderr__ or sys.stderr
    try:
      stream.flush()
      faulthandler.dump_traceback(file=stream, all_threads=True)
    except (AttributeError, OSError, ValueError):  # a stream with no file descriptor
      stream.write('(no stacks: the stream has no file descriptor)\n')
    stream.write(f'gpt-jax: error: {message}\n')
    stream.flush()
    self._exit(HUNG_EXIT_CODE)
