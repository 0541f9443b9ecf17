"""TensorBoard scalars written directly: an event file of TFRecord-framed `Event` protos.

A run logs only scalars, and the format for them is small: each record is its length
(uint64), the masked crc32c of the length, an `Event` proto and the masked crc32c of it;
the first event names the file version. Writing it here spares every training process
tensorboardX's import (2 to 3 seconds: it loads torch when installed, and a cloud storage
client).
"""

import itertools
import os
import socket
import struct
import time
from pathlib import Path

import google_crc32c

_FILE_VERSION = b'brain.Event:2'
_writers = itertools.count()  # two writers of one process in one second get two files


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  if value < 0:
    raise ValueError(f'a TensorBoard step must be >= 0, not {value}')
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, body: bytes) -> bytes:
  """Event{wall_time = 1 (double), step = 2 (int64)} followed by `body`'s fields."""
  return b'\x09' + struct.pack('<d', time.time()) + b'\x10' + _varint(step) + body


def _scalar(tag: str, value: float) -> bytes:
  """Event.summary = 5: Summary{value = 1: Value{tag = 1, simple_value = 2 (float)}}."""
  summary_value = _length_delimited(1, tag.encode()) + b'\x15' + struct.pack('<f', value)
  return _length_delimited(5, _length_delimited(1, summary_value))


class EventWriter:
  """Appends scalar events to a new `events.out.tfevents.*` file in `directory`."""

  def __init__(self, directory: str | Path):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = (
      f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}'
      f'.{os.getpid()}.{next(_writers)}'
    )
    self._file = open(directory / name, 'xb')
    self._write(_event(0, _length_delimited(3, _FILE_VERSION)))

  def _write(self, event: bytes) -> None:
    length = struct.pack('<Q', len(event))
    self._file.write(
      length
      + struct.pack('<I', _masked_crc(length))
      + event
      + struct.pack('<I', _masked_crc(event))
    )

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._write(_event(step, _scalar(tag, value)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
