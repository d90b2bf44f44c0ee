"""Fast path for the hot endpoint: GET/HEAD ``/.well-known/jwks.json`` and ``/jwks.json``.

aiohttp's request layer costs about 37 µs per request on its own, three times nginx; verifiers
fetch the JWKS far more often than anything else is asked. So every connection starts on
:class:`FastJwksProtocol`, which parses requests with httptools (llhttp, the parser aiohttp's
own C parser also wraps) and answers the plain JWKS requests itself, from bytes built once per
snapshot and per second (the Date header). The first request that is anything else is handed,
with the connection, to aiohttp's own protocol for the rest of the connection's life:
aiohttp's ``RequestHandler`` from the runner's server gets ``connection_made(transport)``,
becomes the transport's protocol and is fed the raw bytes of every request not answered yet.
The aiohttp app (app.py) stays the one implementation of every endpoint; the fast path
serializes the headers the app's JWKS handler builds (``_Handlers.jwks_headers``), uses its
``etag_matches`` and counts in the same metric series, and its answers are byte for byte the
app's (tests/unit/test_sidecar_fastpath.py sends the same requests to both and compares).

A request is answered here only if all of this holds, otherwise the connection is handed over:

* GET or HEAD, HTTP/1.0 or 1.1, the target exactly one of :data:`FAST_PATHS` (no query);
* a valid set is loaded (before that, the app's 503 is the answer);
* no body, no Content-Length, Transfer-Encoding, Upgrade, Expect, Content-Encoding or
  Sec-WebSocket-Key1 header, no header name twice, no NUL byte in a value, Host present on
  HTTP/1.1, at most :data:`MAX_HEADERS` headers of at most :data:`MAX_FIELD` bytes each: far
  inside aiohttp's own limits (128 headers, 8190 bytes), so that everything aiohttp would
  refuse, and everything close to it, is refused by aiohttp itself;
* httptools parsed it without error (any parser error hands over: aiohttp answers it).

Requests are answered only when every complete request received so far on the connection is a
fast one and no partial request is pending (pipelined requests are answered together, in
order, in one write); so the bytes handed over always start at a request boundary. Unanswered
bytes are kept (at most :data:`MAX_PENDING` while a request is incomplete, then aiohttp takes
over and applies its own limits).

Pipelining is bounded so that a client that sends and never reads cannot make one connection
hold more than the transport's write high-water mark (64 KiB by default) plus one batch of
answers plus one read of input (asyncio reads at most 256 KiB at a time): one read is fed to the
parser :data:`MAX_PIPELINED` requests at a time, each batch answered in one write, and once
the write buffer is above its high-water mark the rest of the read waits, unparsed, with
reading paused, until the transport says it drained (``resume_writing``). Without the batches,
one read of 256 KiB of small GETs became one write of about 11 MB: 100 such connections took
the sidecar past its memory limit. A read holding one request, the usual case, is one batch.

Connections idle for ``keepalive_timeout`` (no complete request since the last answer, also
while a request trickles in) are closed. :meth:`FastPath.close` closes every fast-path
connection (graceful shutdown: answers are written synchronously, so none is ever in flight;
handed-over connections belong to aiohttp's server and are drained by the runner).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_server import Server

from .app import HANDLERS, JWKS_PATHS, STATE, etag_matches

log = logging.getLogger(__name__)

FAST_PATHS = frozenset(p.encode() for p in JWKS_PATHS)
MAX_HEADERS = 64
MAX_FIELD = 4096
MAX_PENDING = 16384
MAX_PIPELINED = 32
"""Requests answered per write: aiohttp's own queue of pipelined requests (``MAX_MSG_QUEUE_SIZE``)
holds as many. Enough to answer a pipelining client in few writes, small enough that a batch of
answers (about 70 KB with a 3-key RSA set) stays near the write high-water mark."""
_REQUEST_END = b"\r\n\r\n"  # a fast request has no body: it ends with its empty line
_REFUSED_HEADERS = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"content-encoding", b"sec-websocket-key1"}
)
_REASONS = {200: "OK", 304: "Not Modified"}


class FastPath:
    """Protocol factory for ``loop.create_server``: one per listening site."""

    def __init__(self, app: web.Application, server: Server, *, keepalive_timeout: float = 75.0) -> None:
        self.app = app
        self.server = server
        self.state = app[STATE]
        self.handlers = app[HANDLERS]
        self.metrics = app[STATE].metrics
        self.keepalive_timeout = keepalive_timeout
        self._loop = asyncio.get_running_loop()
        self.connections: set[FastJwksProtocol] = set()
        self.closing = False
        self.answered = 0
        """Requests answered here (for tests and debugging)."""
        self.handed_over = 0
        """Connections handed over to aiohttp."""
        self._cache_snap: Any = None
        self._cache_date = ""
        self._cache: dict[tuple[bool, bool, int, bool, bytes], tuple[bytes, Any]] = {}

    def loop_time(self) -> float:
        return self._loop.time()

    def __call__(self) -> FastJwksProtocol:
        return FastJwksProtocol(self)

    def close(self) -> None:
        """Close every fast-path connection (after the listener closed)."""
        self.closing = True
        for conn in list(self.connections):
            conn.close()

    def response(self, modified: bool, head: bool, minor: int, keep_alive: bool, path: bytes) -> bytes:
        """The app's answer, serialized as aiohttp does (status line, the handler's headers,
        Content-Length, Date, Server, Connection), and counted."""
        snap = self.state.current
        date = rfc822_formatted_time()
        if snap is not self._cache_snap or date != self._cache_date:
            self._cache_snap, self._cache_date, self._cache = snap, date, {}
        variant = (modified, head, minor, keep_alive, path)
        cached = self._cache.get(variant)
        if cached is None:
            assert snap is not None
            not_modified, full = self.handlers.jwks_headers(snap)
            status = 200 if modified else 304
            lines = [f"HTTP/1.{minor} {status} {_REASONS[status]}"]
            lines += [f"{k}: {v}" for k, v in (full if modified else not_modified).items()]
            if modified:
                lines.append(f"Content-Length: {len(snap.body)}")
            lines += [f"Date: {date}", f"Server: {SERVER_SOFTWARE}"]
            if keep_alive and minor == 0:
                lines.append("Connection: keep-alive")
            elif not keep_alive and minor == 1:
                lines.append("Connection: close")
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
            if modified and not head:
                data += snap.body
            counter = self.metrics.request_counter(path.decode(), "HEAD" if head else "GET", status)
            cached = self._cache[variant] = (data, counter)
        cached[1].inc()
        return cached[0]


class FastJwksProtocol(asyncio.Protocol):
    """One connection, until it is handed over to aiohttp (see the module docstring)."""

    def __init__(self, owner: FastPath) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending = bytearray()  # raw bytes of the requests not answered yet
        self.unread = b""  # input not fed to the parser yet: waits while the write buffer drains
        self.unread_at = 0
        self.done: list[tuple[bool, int, bool, bytes, str | None]] = []
        self.in_message = False
        self.refuse = False
        self.writing_paused = False
        self.last_answer = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers = 0
        self.seen: set[bytes] = set()
        self.if_none_match: str | None = None
        self.user_agent: bytes | None = None
        self.host = False
        self.keep_alive = True

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = transport  # type: ignore[assignment]
        owner = self.owner
        if owner.closing:
            transport.close()
            return
        owner.connections.add(self)
        sock = tr.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # as aiohttp does: answers are whole, never wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        loop = asyncio.get_running_loop()
        self.last_answer = loop.time()
        if owner.keepalive_timeout > 0:
            self.timer = loop.call_at(self.last_answer + owner.keepalive_timeout, self._check_idle)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.owner.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        self.unread, self.unread_at = b"", 0

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._consume()  # the rest of the last read first (may pause writing again)
        transport = self.transport
        if not self.writing_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.unread and data.count(_REQUEST_END) <= MAX_PIPELINED:
            self._feed(transport, data)  # the usual read: one batch
            return
        # Many pipelined requests: in batches. (Reading is paused while some of the last read
        # is left; should data come all the same, it waits behind that.)
        self.unread = self.unread[self.unread_at:] + data
        self.unread_at = 0
        self._consume()

    def _consume(self) -> None:
        """Feed the unread input to the parser, :data:`MAX_PIPELINED` requests at a time, until
        it is all fed or the write buffer is above its high-water mark (then ``pause_writing``
        paused reading, and ``resume_writing`` calls this again)."""
        data = self.unread
        while self.unread_at < len(data) and not self.writing_paused:
            transport = self.transport
            if transport is None or transport.is_closing():  # handed over (it took the rest), or closed
                break
            start = end = self.unread_at
            for _ in range(MAX_PIPELINED):
                found = data.find(_REQUEST_END, end)
                if found < 0:
                    end = len(data)
                    break
                end = found + len(_REQUEST_END)
            self.unread_at = end
            self._feed(transport, data if start == 0 and end == len(data) else data[start:end])
        if self.unread_at >= len(data) or self.transport is None or self.transport.is_closing():
            self.unread, self.unread_at = b"", 0

    def _feed(self, transport: asyncio.Transport, data: bytes) -> None:
        self.pending += data
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # aiohttp answers these
            self.refuse = True
        if self.refuse:
            self._hand_over()
            return
        if not self.done:
            if len(self.pending) > MAX_PENDING:
                self._hand_over()
            return
        if self.in_message:
            # Complete fast requests, then part of the next one (pipelining): find where the
            # complete ones end, answer them and keep only the partial one's bytes.
            rest = self._split_at_boundary()
            if rest is None:
                self._hand_over()
                return
        else:
            rest = b""
        self._answer(transport, rest)

    def _answer(self, transport: asyncio.Transport, rest: bytes) -> None:
        owner = self.owner
        snap = owner.state.current
        if snap is None:  # a set is never unloaded; never answer without one all the same
            self._hand_over()
            return
        out = []
        close = False
        for head, minor, keep_alive, path, if_none_match, user_agent in self.done:
            modified = if_none_match is None or not etag_matches(if_none_match, snap.etag)
            out.append(owner.response(modified, head, minor, keep_alive, path))
            owner.metrics.count_jwks_fetch(user_agent)
            if not keep_alive:
                close = True  # as aiohttp: answer it, close, ignore what was pipelined after it
                break
        owner.answered += len(out)
        self.done.clear()
        if rest:
            self.pending[:] = rest
        else:
            self.pending.clear()
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            transport.close()
        else:
            self.last_answer = owner.loop_time()

    def _split_at_boundary(self) -> bytes | None:
        """Re-parse the unanswered bytes with a new parser, one line at a time (a fast request
        has no body, so it ends with a line), to find where the last complete request ends.
        ``self.done`` is rebuilt; returns the bytes after that point (None: hand over)."""
        data = bytes(self.pending)
        self.parser = parser = httptools.HttpRequestParser(self)
        self.done = []
        self.in_message = False
        self._reset_message()
        boundary = 0
        complete = 0
        start = 0
        try:
            while start < len(data):
                nl = data.find(b"\n", start)
                end = len(data) if nl < 0 else nl + 1
                parser.feed_data(data[start:end])
                if len(self.done) > complete and not self.in_message:
                    boundary, complete = end, len(self.done)
                start = end
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        if self.refuse or complete == 0 or len(self.done) != complete:
            return None
        return data[boundary:]

    def eof_received(self) -> bool | None:
        return None  # close once our answers are written, as aiohttp does

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        lname = name.lower()
        if (
            self.headers > MAX_HEADERS
            or len(name) + len(value) > MAX_FIELD
            or lname in self.seen
            or lname in _REFUSED_HEADERS
            or b"\x00" in value
        ):
            self.refuse = True
            return
        self.seen.add(lname)
        if lname == b"host":
            self.host = True
        elif lname == b"user-agent":
            self.user_agent = value
        elif lname == b"if-none-match":
            # as aiohttp's parser reads a header value
            self.if_none_match = value.rstrip(b" \t").decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        p = self.parser
        version = p.get_http_version()
        if (
            self.url not in FAST_PATHS
            or p.get_method() not in (b"GET", b"HEAD")
            or version not in ("1.1", "1.0")
            or (version == "1.1" and not self.host)
            or p.should_upgrade()
            or self.owner.state.current is None
        ):
            self.refuse = True
        self.keep_alive = p.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.refuse = True

    def on_message_complete(self) -> None:
        self.in_message = False
        if not self.refuse:
            p = self.parser
            self.done.append(
                (
                    p.get_method() == b"HEAD",
                    1 if p.get_http_version() == "1.1" else 0,
                    self.keep_alive,
                    self.url,
                    self.if_none_match,
                    self.user_agent,
                )
            )
        self._reset_message()

    # -- hand-over, timeouts, shutdown

    def _hand_over(self) -> None:
        """aiohttp's own protocol takes the connection, starting with the unanswered bytes."""
        transport = self.transport
        assert transport is not None
        self.owner.connections.discard(self)
        self.owner.handed_over += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        data = bytes(self.pending) + self.unread[self.unread_at:]
        self.pending.clear()
        self.unread, self.unread_at = b"", 0
        self.done.clear()
        self.transport = None
        handler = self.owner.server()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        if self.writing_paused:
            handler.pause_writing()  # the transport will call its resume_writing()
            transport.resume_reading()  # aiohttp waits for drain itself, in its handlers
        if data:
            handler.data_received(data)

    def _check_idle(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self.last_answer + self.owner.keepalive_timeout
        if loop.time() >= deadline:
            transport.close()
        else:
            self.timer = loop.call_at(deadline, self._check_idle)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # written answers are flushed first


class FastJwksSite(web.TCPSite):
    """``web.TCPSite`` whose connections start on the fast path (the runner's app must be a
    :func:`~.app.make_app` app). ``stop()`` also closes the fast-path connections."""

    __slots__ = ("_fast", "_keepalive_timeout")

    def __init__(self, runner: web.AppRunner, host: str | None, port: int, *, keepalive_timeout: float = 75.0,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._keepalive_timeout = keepalive_timeout
        self._fast: FastPath | None = None

    @property
    def fast_path(self) -> FastPath | None:
        return self._fast

    async def start(self) -> None:
        self._runner._reg_site(self)
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        self._fast = FastPath(runner.app, runner.server, keepalive_timeout=self._keepalive_timeout)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._fast,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        if self._fast is not None:
            self._fast.close()
