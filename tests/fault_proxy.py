"""A fault-injecting reverse proxy in front of a storage server, for tests (aiohttp).

    proxy = FaultProxy(gcs.url, seed=0, fail=0.05, stall=0.002)
    proxy.start()          # serves on 127.0.0.1 from a thread of its own
    env = client_env(proxy.url)   # clients reach the bucket through it
    proxy.stall_all = True        # from now on no request is answered
    proxy.counts                  # {'requests': ..., '503': ..., 'stalled': ...}

Each request draws one number from a generator seeded with `seed`, in the order requests
arrive: below `stall` the request is never answered (the proxy holds it until it stops); below
`stall + fail` it is answered 503, 429 or with a reset connection (TCP RST), one of the three
at random; otherwise it goes to the server and its answer comes back. A failed or stalled
request never reaches the server, as when the network drops it on the way.
"""

import asyncio
import random
import socket
import struct
import threading

import aiohttp
from aiohttp import web

FAILURES = ('503', '429', 'reset')
# Headers that describe one connection, not the message (RFC 9110), and the ones aiohttp sets.
_HOP_BY_HOP = {
  'connection',
  'keep-alive',
  'transfer-encoding',
  'content-length',
  'upgrade',
  'proxy-connection',
  'te',
  'trailer',
  'host',
  'date',
  'server',
}


class FaultProxy:
  """The proxy, its address once started, and its counts of what it did to requests."""

  def __init__(self, upstream: str, *, seed: int = 0, fail: float = 0.0, stall: float = 0.0):
    self.upstream = upstream.rstrip('/')
    self.fail, self.stall = fail, stall
    self.stall_all = False
    self.counts = dict.fromkeys(('requests', 'forwarded', 'stalled', *FAILURES), 0)
    self._random = random.Random(seed)
    self._loop = asyncio.new_event_loop()
    self._ready = threading.Event()
    self._thread = threading.Thread(target=self._serve, daemon=True, name='fault-proxy')
    self.url = ''

  def reseed(self, seed: int, *, fail: float = 0.0, stall: float = 0.0) -> None:
    """New faults, drawn afresh from `seed` for the requests from now on."""
    self.fail, self.stall, self._random = fail, stall, random.Random(seed)

  def start(self) -> str:
    """Starts serving; returns the proxy's URL (http://127.0.0.1:PORT)."""
    self._thread.start()
    if not self._ready.wait(30):
      raise RuntimeError('the fault proxy did not start')
    return self.url

  def stop(self) -> None:
    self._loop.call_soon_threadsafe(self._stopping.set)
    self._thread.join(30)

  def _serve(self) -> None:
    asyncio.set_event_loop(self._loop)
    self._loop.run_until_complete(self._main())

  async def _main(self) -> None:
    self._stopping = asyncio.Event()
    self._session = aiohttp.ClientSession(auto_decompress=False)
    app = web.Application(client_max_size=2**31)
    app.router.add_route('*', '/{tail:.*}', self._handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    self.url = f'http://{host}:{port}'
    self._ready.set()
    await self._stopping.wait()
    await runner.cleanup()
    await self._session.close()

  def _draw(self) -> str:
    """What happens to the next request: 'forwarded', 'stalled' or one of FAILURES."""
    self.counts['requests'] += 1
    if self.stall_all:
      return 'stalled'
    draw = self._random.random()
    if draw < self.stall:
      return 'stalled'
    if draw < self.stall + self.fail:
      return self._random.choice(FAILURES)
    return 'forwarded'

  async def _handle(self, request: web.Request) -> web.StreamResponse:
    body = await request.read()  # a client never blocks sending to a stalled proxy
    fate = self._draw()
    self.counts[fate] += 1
    if fate == 'stalled':
      await self._stopping.wait()  # never answered while the proxy runs
      return web.Response(status=503)
    if fate == 'reset':
      sock = request.transport.get_extra_info('socket') if request.transport else None
      if sock is not None:  # close with RST, not FIN: "connection reset by peer"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
      if request.transport is not None:
        request.transport.abort()
      return web.Response(status=503)  # never sent: the connection is gone
    if fate in FAILURES:
      return web.json_response(
        {'error': {'code': int(fate), 'message': f'injected {fate}'}}, status=int(fate)
      )
    return await self._forward(request, body)

  async def _forward(self, request: web.Request, body: bytes) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    async with self._session.request(
      request.method,
      self.upstream + request.rel_url.raw_path_qs,
      headers=headers,
      data=body,
      allow_redirects=False,
    ) as answer:
      content = await answer.read()
      out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
      if 'Location' in out:  # resumable uploads continue at the URL the server names
        out['Location'] = out['Location'].replace(self.upstream, self.url)
      return web.Response(status=answer.status, headers=out, body=content)
