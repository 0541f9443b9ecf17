"""One writer per workdir: a lease that a run takes before it writes anything there.

Two runs writing one workdir interleave checkpoints, logs and data positions into a state
neither of them would resume from. So the first process of every run that writes a workdir
(pretraining, fine-tuning) takes `WORKDIR/lease.json` first, and a second run refuses in one
line, writing nothing:

- A local workdir: the file is locked with `fcntl.flock`, and holds a JSON body naming the
  holder (host, pid, since when). The kernel releases the lock when the holder exits, however
  it exits; a run that finds a body but takes the lock names the holder that stopped without
  releasing it (killed, or its machine gone) in a warning, and goes on.
- A bucket (`gs://`): an object written only with a generation precondition
  (`ifGenerationMatch`, 0 to create), so of two runs racing for it exactly one wins. Its holder
  rewrites it every `checkpoint.lease_heartbeat_s` seconds from a thread; a lease not renewed
  for `checkpoint.lease_stale_after_s` seconds (by the bucket's clock against this host's) is
  stale, and taken over with a warning. A holder whose lease was taken over stops at once
  (exit status 1), before it writes again.

Released (locally: unlocked and emptied; in a bucket: deleted, if still ours) when the run ends.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError, warn

LEASE_FILE = 'lease.json'


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lease: the body of the lease file."""

  host: str
  pid: int
  since: str  # ISO 8601, UTC

  @classmethod
  def me(cls) -> 'Holder':
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    return cls(socket.gethostname(), os.getpid(), now)

  @classmethod
  def parse(cls, body: bytes) -> 'Holder | None':
    """The holder a body names; None for an empty or unreadable body (a lease being written)."""
    try:
      fields = json.loads(body)
      return cls(str(fields['host']), int(fields['pid']), str(fields['since']))
    except (ValueError, KeyError, TypeError):
      return None

  def body(self) -> bytes:
    return json.dumps(dataclasses.asdict(self)).encode() + b'\n'

  def describe(self) -> str:
    return f'host {self.host} pid {self.pid} since {self.since}'


def _in_use(workdir: str, holder: Holder | None, how_to_take_over: str) -> UserError:
  who = holder.describe() if holder else 'another run (its lease is being written)'
  return UserError(
    f'workdir {workdir} is in use by {who}; stop that run, or if it is gone, {how_to_take_over}'
  )


class LocalLease:
  """`lease.json` in a local workdir, held with fcntl.flock for as long as the file is open."""

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._path = os.path.join(workdir, LEASE_FILE)
    self._file: IO[bytes] | None = None

  def acquire(self) -> None:
    file = open(self._path, 'a+b')  # noqa: SIM115 -- held open for the whole run
    try:
      fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      file.seek(0)
      holder = Holder.parse(file.read())
      file.close()
      raise _in_use(
        self._workdir,
        holder,
        'rerun this command: the kernel releases its lock when it exits (on a network '
        'filesystem, once the lock server notices)',
      ) from None
    file.seek(0)
    previous = Holder.parse(file.read())
    if previous is not None:
      warn(
        f'workdir {self._workdir} was held by {previous.describe()}, which stopped without '
        'releasing it (killed, or its machine went down); taking it over'
      )
    file.truncate(0)
    file.write(Holder.me().body())
    file.flush()
    self._file = file

  def release(self) -> None:
    if self._file is not None:
      self._file.truncate(0)  # an empty body: released cleanly, nobody to warn about
      self._file.close()  # closing unlocks
      self._file = None


class BucketLease:
  """`lease.json` in a bucket: written only with a generation precondition, renewed by a
  heartbeat thread, taken over once it has not been renewed for `stale_after_s`."""

  def __init__(self, workdir: str, heartbeat_s: float, stale_after_s: float):
    import fsspec

    self._workdir = workdir
    self._fs: Any = fsspec.filesystem(workdir.split('://', 1)[0])
    bucket_and_path = f'{workdir.rstrip("/").split("://", 1)[1]}/{LEASE_FILE}'
    self._bucket, self._key = bucket_and_path.split('/', 1)
    self._heartbeat_s, self._stale_after_s = heartbeat_s, stale_after_s
    self._generation = 0  # of our lease object; 0 while we hold none
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._body = Holder.me().body()

  def _stat(self) -> tuple[int, float] | None:
    """(generation, seconds since it was last written) of the lease object, or None."""
    try:
      meta = self._fs.call('GET', 'b/{}/o/{}', self._bucket, self._key, json_out=True)
    except FileNotFoundError:
      return None
    updated = datetime.datetime.fromisoformat(meta['updated'].replace('Z', '+00:00'))
    return int(meta['generation']), time.time() - updated.timestamp()

  def _read(self, generation: int) -> Holder | None:
    try:
      _, body = self._fs.call(
        'GET', 'b/{}/o/{}', self._bucket, self._key, alt='media', generation=str(generation)
      )
    except FileNotFoundError:
      return None
    return Holder.parse(body)

  def _write(self, if_generation: int) -> int | None:
    """Writes our body if the object's generation is `if_generation` (0: it does not exist);
    its new generation, or None when the precondition failed (someone else wrote first)."""
    # A multipart upload, as gcsfs's own create mode sends: storage emulators honour the
    # precondition on these (fake-gcs-server ignores it on uploadType=media).
    head = json.dumps({'name': self._key, 'contentType': 'application/json'})
    data = (
      (
        f'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{head}\n--==0==\n'
        'Content-Type: application/json\n\n'
      ).encode()
      + self._body
      + b'\n--==0==--'
    )
    try:
      meta = self._fs.call(
        'POST',
        f'{self._fs._location}/upload/storage/v1/b/{{}}/o',
        self._bucket,
        uploadType='multipart',
        ifGenerationMatch=str(if_generation),
        headers={'Content-Type': 'multipart/related; boundary="==0=="'},
        data=data,
        json_out=True,
      )
    except FileExistsError:  # HTTP 412: the precondition failed
      return None
    return int(meta['generation'])

  def acquire(self) -> None:
    stat = self._stat()
    if stat is not None:
      generation, age = stat
      holder = self._read(generation)
      if age < self._stale_after_s:
        raise _in_use(self._workdir, holder, self._how_to_take_over(age))
    new = self._write(stat[0] if stat else 0)
    if new is None:  # another run created or took it over between our read and our write
      stat = self._stat()
      raise _in_use(self._workdir, self._read(stat[0]) if stat else None, self._how_to_take_over(0))
    if stat is not None:
      warn(
        f'workdir {self._workdir} was held by '
        f'{holder.describe() if holder else "an unnamed run"}, which has not renewed its lease '
        f'for {stat[1]:.0f}s (checkpoint.lease_stale_after_s={self._stale_after_s:g}); taking it over'
      )
    self._generation = new
    self._thread = threading.Thread(target=self._beat, name='gpt-jax-lease', daemon=True)
    self._thread.start()

  def _how_to_take_over(self, age: float) -> str:
    wait = max(0.0, self._stale_after_s - age)
    return (
      f'rerun in {wait:.0f}s: a lease not renewed for checkpoint.lease_stale_after_s='
      f'{self._stale_after_s:g}s is taken over (or delete {self._workdir}/{LEASE_FILE})'
    )

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(self._heartbeat_s):
      try:
        new = self._write(self._generation)
      except Exception as error:  # noqa: BLE001 -- a storage hiccup: try again next beat
        if not warned:
          warn(f'could not renew the lease on workdir {self._workdir} ({error!r}); retrying')
          warned = True
        continue
      if new is None:
        self._lost()
      self._generation, warned = new or 0, False

  def _lost(self) -> None:
    """Another run took the lease over: stop now, before this one writes again."""
    stat = self._stat()
    holder = self._read(stat[0]) if stat else None
    who = holder.describe() if holder else 'another run'
    print(
      f'gpt-jax: error: the lease on workdir {self._workdir} was taken over by {who} (this run '
      f'could not renew it for checkpoint.lease_stale_after_s={self._stale_after_s:g}s); '
      'stopping without writing more',
      file=sys.stderr,
      flush=True,
    )
    os._exit(1)

  def release(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    if self._generation:
      with contextlib.suppress(FileNotFoundError, FileExistsError):
        self._fs.call(
          'DELETE',
          'b/{}/o/{}',
          self._bucket,
          self._key,
          ifGenerationMatch=str(self._generation),
        )
      self._generation = 0


@contextlib.contextmanager
def hold(workdir: Any, heartbeat_s: float, stale_after_s: float) -> Iterator[None]:
  """Holds `workdir`'s lease (process 0 takes it; every process learns whether it could)
  for the body of the `with`; raises a UserError, having written nothing, when another run
  holds it."""
  import jax

  where = os.fspath(workdir_lib.path(workdir))
  if heartbeat_s <= 0 or stale_after_s <= heartbeat_s:
    raise UserError(
      f'checkpoint.lease_heartbeat_s={heartbeat_s:g} and checkpoint.lease_stale_after_s='
      f'{stale_after_s:g}: the heartbeat must be positive and the stale limit longer (e.g. '
      '3 heartbeats)'
    )
  lease: LocalLease | BucketLease | None = None
  error: UserError | None = None
  if jax.process_index() == 0:
    lease = (
      LocalLease(where)
      if workdir_lib.is_local(where)
      else BucketLease(where, heartbeat_s, stale_after_s)
    )
    try:
      lease.acquire()
    except UserError as refused:
      lease, error = None, refused
  _agree(error, where)
  try:
    yield
  finally:
    if lease is not None:
      lease.release()


def _agree(error: UserError | None, where: str) -> None:
  """Raises `error` on process 0, and a pointer to it on the others, if process 0 was refused."""
  import jax

  refused = error is not None
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
  if error is not None:
    raise error
  if refused:
    raise UserError(f'workdir {where} is in use by another run (see process 0)')
