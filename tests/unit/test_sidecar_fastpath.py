"""sidecar/fastpath.py: the JWKS fast path answers byte for byte what the aiohttp app answers,
and hands everything else over to the app. Real sockets on 127.0.0.1: one runner, one app, two
listeners, the app's own (``web.TCPSite``) and the fast path's (``FastJwksSite``); every
comparison sends the same bytes to both."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from dataclasses import dataclass

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from prometheus_client.parser import text_string_to_metric_families

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.sidecar import fastpath
from signing_key_operator.sidecar.app import LIFECYCLE, STATE, make_app
from signing_key_operator.sidecar.fastpath import FastJwksSite
from signing_key_operator.sidecar.metrics import MAX_CLIENT_LABELS
from signing_key_operator.sidecar.settings import Settings

JWKS = "/.well-known/jwks.json"


def _body() -> bytes:
    keys = []
    for _ in range(2):
        key = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
        keys.append({**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES256"})
    return render_jwk_set(keys)


BODY = _body()


@dataclass
class Servers:
    app: web.Application
    runner: web.AppRunner
    plain: int
    fast: int
    site: FastJwksSite

    @property
    def fp(self) -> fastpath.FastPath:
        assert self.site.fast_path is not None
        return self.site.fast_path

    @property
    def etag(self) -> str:
        return self.app[STATE].current.etag


@contextlib.asynccontextmanager
async def servers(*, load: bool = True, keepalive_timeout: float = 75.0, **settings):
    app = make_app(None, Settings(**settings))
    if load:
        app[STATE].offer(BODY, max_age=30, origin="test")
    runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await plain.start()
    site = FastJwksSite(runner, "127.0.0.1", 0, keepalive_timeout=keepalive_timeout)
    await site.start()
    try:
        yield Servers(app, runner, plain.port, site.port, site)
    finally:
        await runner.cleanup()


async def exchange(port: int, *chunks: bytes, idle: float = 0.25, pause: float = 0.02) -> bytes:
    """Send the chunks (a short pause between them), then read until EOF or ``idle`` seconds of
    silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()
        return await read_all(reader, idle)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_all(reader: asyncio.StreamReader, idle: float) -> bytes:
    out = b""
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), idle)
        except asyncio.TimeoutError:
            return out
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data


_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


async def same_answer(s: Servers, *chunks: bytes, **kw) -> bytes:
    """The fast listener's answer, asserted equal to the app's (retried when a second boundary
    fell between the two, changing Date; the fast path's counters then count the last try)."""
    fp = s.fp
    initial = (fp.answered, fp.handed_over)
    for _ in range(3):
        fp.answered, fp.handed_over = initial
        app_answer = await exchange(s.plain, *chunks, **kw)
        fast_answer = await exchange(s.fast, *chunks, **kw)
        if _DATE.findall(app_answer) == _DATE.findall(fast_answer):
            break
    assert fast_answer == app_answer
    assert fast_answer
    return fast_answer


def req(method: str = "GET", path: str = JWKS, version: str = "1.1", *headers: str, host: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/{version}"]
    if host:
        lines.append("Host: jwks.test")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def close(method: str = "GET", path: str = JWKS, *headers: str) -> bytes:
    return req(method, path, "1.1", *headers, "Connection: close")


# ---------------------------------------------------------------- answered on the fast path


@pytest.mark.parametrize(
    "request_bytes",
    [
        close("GET"),
        close("HEAD"),
        close("GET", "/jwks.json"),
        close("HEAD", "/jwks.json"),
        req("GET", JWKS, "1.0", host=False),
        req("HEAD", JWKS, "1.0"),
        close("GET", JWKS, "User-Agent: Go-http-client/1.1", "Accept: application/jwk-set+json, application/json",
              "Accept-Encoding: gzip"),
        close("GET", JWKS, "If-None-Match: \"nope\""),
        close("GET", JWKS, "If-None-Match: garbage"),
        b"GET /jwks.json HTTP/1.1\r\nhost:   a   \r\nconnection: Close\r\n\r\n",
        b"\r\nGET /jwks.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ],
)
async def test_fast_answers_equal_the_app(request_bytes):
    async with servers() as s:
        answer = await same_answer(s, request_bytes)
        assert answer.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n"))
        assert answer.endswith(b"\r\n\r\n" if request_bytes.startswith(b"HEAD") else BODY)
        assert s.fp.answered == 1 and s.fp.handed_over == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("template", ["{e}", "W/{e}", '"x", {e}', "*", ' {e} , "y"'])
async def test_if_none_match_gives_the_apps_304(method, template):
    async with servers() as s:
        answer = await same_answer(s, close(method, JWKS, "If-None-Match: " + template.format(e=s.etag)))
        assert answer.startswith(b"HTTP/1.1 304 Not Modified\r\n") and answer.endswith(b"\r\n\r\n")
        assert s.fp.answered == 1 and s.fp.handed_over == 0


async def test_keep_alive_http11_and_http10():
    async with servers() as s:
        for version, extra in (("1.1", ()), ("1.0", ("Connection: keep-alive",))):
            answers = {}
            for port in (s.plain, s.fast):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                got = []
                for headers in ((), (f"If-None-Match: {s.etag}",), ()):
                    writer.write(req("GET", JWKS, version, *extra, *headers))
                    got.append(await read_all(reader, 0.2))
                answers[port] = got
                assert not reader.at_eof()  # still open
                writer.close()
            assert [_DATE.sub(b"", a) for a in answers[s.fast]] == [_DATE.sub(b"", a) for a in answers[s.plain]]
            assert [a.split(b" ")[1] for a in answers[s.fast]] == [b"200", b"304", b"200"]
        assert s.fp.answered == 6 and s.fp.handed_over == 0


async def test_http10_without_keep_alive_is_closed_after_the_answer():
    async with servers() as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(req("GET", JWKS, "1.0", host=False))
        data = await asyncio.wait_for(reader.read(), 2)  # EOF: the server closed
        assert data.endswith(BODY)
        writer.close()


async def test_pipelined_requests_in_one_write_and_split_across_writes():
    async with servers() as s:
        three = req() + req("HEAD") + req("GET", JWKS, "1.1", f"If-None-Match: {s.etag}") + close()
        answer = await same_answer(s, three)
        assert answer.count(b"HTTP/1.1 ") == 4
        assert s.fp.answered == 4 and s.fp.handed_over == 0
        # a request split anywhere, even inside the request line, and a pipelined one behind it
        await same_answer(s, three[:5], three[5:40], three[40:])
        assert s.fp.answered == 8 and s.fp.handed_over == 0
        # complete requests followed by part of the next: the complete ones are answered at once
        cut = len(req()) + 7
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(three[:cut])
        assert (await read_all(reader, 0.2)).count(b"HTTP/1.1 200 OK") == 1
        writer.write(three[cut:])
        assert (await read_all(reader, 0.2)).count(b"HTTP/1.1 ") == 3
        assert s.fp.answered == 12 and s.fp.handed_over == 0
        writer.close()


# ---------------------------------------------------------------- handed over to the app


@pytest.mark.parametrize(
    "request_bytes",
    [
        close("GET", "/readyz"),
        close("GET", "/healthz"),
        close("GET", "/.well-known/openid-configuration"),
        close("GET", "/nope"),
        close("GET", JWKS + "?x=1"),
        close("GET", "/jwks.json/"),
        close("POST", JWKS),
        close("PUT", JWKS, "Content-Length: 2") + b"{}",
        close("OPTIONS", JWKS),
        close("DELETE", JWKS),
        close("GET", JWKS, "Content-Length: 5") + b"hello",
        close("GET", JWKS, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        close("GET", JWKS, "Expect: 100-continue"),
        req("GET", JWKS, "1.1", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
        close("GET", JWKS, "Sec-WebSocket-Key1: x"),
        req("GET", JWKS, "1.1", "Connection: close", host=False),  # HTTP/1.1 without Host: 400
        close("GET", JWKS, "Host: second"),  # duplicate Host: 400
        close("GET", JWKS, "If-None-Match: \"a\"", "If-None-Match: \"b\""),
        close("GET", JWKS, "X-A: 1\x00"),
        req("GET", JWKS, "1.2", "Connection: close"),
        req("GET", JWKS, "2.0", "Connection: close"),
        close("get", JWKS),
        b"GET " + JWKS.encode() + b"\r\n\r\n",  # HTTP/0.9
        b"GET http://jwks.test/.well-known/jwks.json HTTP/1.1\r\nHost: jwks.test\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /jwks.json HTTP/1.1\nHost: a\nConnection: close\n\n",  # bare LF: 400
        close("GET", JWKS, "X-Folded: a", " b"),  # obsolete line folding
        close("GET", JWKS, "X Bad: a"),
        close("GET", JWKS, "X-Big: " + "a" * 9000),  # over aiohttp's field limit: 400
        close("GET", JWKS, "X-Big: " + "a" * 5000),  # over the fast path's: aiohttp answers 200
        close("GET", JWKS, *(f"X-{i}: {i}" for i in range(70))),  # over the fast path's count
        close("GET", JWKS, *(f"X-{i}: {i}" for i in range(140))),  # over aiohttp's: 400
        close("GET", "/" + "a" * 9000),
    ],
)
async def test_everything_else_is_handed_over_and_answered_by_the_app(request_bytes):
    async with servers(issuer="https://issuer.test") as s:
        await same_answer(s, request_bytes)
        assert s.fp.answered == 0 and s.fp.handed_over == 1


async def test_metrics_endpoint_is_handed_over():
    async with servers() as s:
        answer = await exchange(s.fast, close("GET", "/metrics"))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"signing_key_sidecar_jwks_generation 1.0" in answer
        assert s.fp.handed_over == 1


async def test_keep_alive_connection_jwks_then_metrics_then_jwks():
    async with servers() as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(req())
        first = await read_all(reader, 0.2)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(BODY)
        assert (s.fp.answered, s.fp.handed_over) == (1, 0)
        writer.write(req("GET", "/metrics"))
        metrics = await read_all(reader, 0.2)
        assert metrics.startswith(b"HTTP/1.1 200 OK\r\n") and b"signing_key_sidecar_http_requests_total" in metrics
        assert s.fp.handed_over == 1
        writer.write(req())
        third = await read_all(reader, 0.2)
        assert _DATE.sub(b"", third) == _DATE.sub(b"", first)  # the app's answer, same bytes
        assert s.fp.answered == 1  # answered by aiohttp: the connection is its own now
        writer.close()


async def test_pipelined_mix_is_answered_by_the_app_in_order():
    async with servers() as s:
        mixed = req() + req("GET", "/healthz") + req("HEAD") + close("POST", JWKS)
        answer = await same_answer(s, mixed)
        assert [m.split(b" ")[1] for m in re.findall(rb"HTTP/1\.1 \d+", answer)] == [b"200", b"200", b"200", b"405"]
        assert (s.fp.answered, s.fp.handed_over) == (0, 1)
        # fast requests answered first, then one that is not: the rest goes to the app
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(req() + req("HEAD"))
        assert (await read_all(reader, 0.2)).count(b"HTTP/1.1 200 OK") == 2
        writer.write(req("GET", "/healthz") + close())
        rest = await read_all(reader, 0.3)
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(BODY) and b"ok\n" in rest
        assert (s.fp.answered, s.fp.handed_over) == (2, 2)
        writer.close()


async def test_partial_request_over_the_pending_limit_is_handed_over():
    async with servers() as s:
        big = b"GET " + JWKS.encode() + b" HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 4000 + b"\r\n"
        pieces = [big] + [b"X-%d: %s\r\n" % (i, b"q" * 4000) for i in range(5)] + [b"Connection: close\r\n\r\n"]
        await same_answer(s, *pieces)
        assert (s.fp.answered, s.fp.handed_over) == (0, 1)


async def test_before_a_set_is_loaded_the_app_answers_then_the_fast_path():
    async with servers(load=False) as s:
        answer = await same_answer(s, close())
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"jwks_not_loaded" in answer
        assert (s.fp.answered, s.fp.handed_over) == (0, 1)
        s.app[STATE].offer(BODY, origin="test")
        answer = await same_answer(s, close())
        assert answer.endswith(BODY)
        assert (s.fp.answered, s.fp.handed_over) == (1, 1)


async def test_new_set_and_new_max_age_are_served_at_once():
    async with servers() as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(req())
        assert b"max-age=30" in await read_all(reader, 0.2)
        s.app[STATE].offer(BODY, max_age=7, origin="test")
        writer.write(req())
        assert b"max-age=7" in await read_all(reader, 0.2)
        other = _body()
        s.app[STATE].offer(other, max_age=7, origin="test")
        writer.write(req("GET", JWKS, "1.1", 'If-None-Match: "' + s.etag.strip('"') + '"'))
        assert (await read_all(reader, 0.2)).startswith(b"HTTP/1.1 304 ")
        await same_answer(s, close())
        writer.close()


def _requests_counts(app: web.Application) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(_metrics_text(app)):
        for sample in family.samples:
            if sample.name == "signing_key_sidecar_http_requests_total":
                out[(sample.labels["path"], sample.labels["method"], sample.labels["status"])] = sample.value
    return out


def _metrics_text(app: web.Application) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app[STATE].metrics.registry).decode()


async def test_fast_path_counts_in_the_apps_metrics():
    sequence = (
        req() + req("HEAD") + req("GET", "/jwks.json") + req("GET", JWKS, "1.1", 'If-None-Match: *')
        + req("HEAD", JWKS, "1.1", 'If-None-Match: *') + close()
    )
    counts = {}
    for which in ("plain", "fast"):
        async with servers() as s:
            before = _requests_counts(s.app)
            await exchange(getattr(s, which), sequence)
            after = _requests_counts(s.app)
            counts[which] = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            if which == "fast":
                assert s.fp.answered == 6
    assert counts["fast"] == counts["plain"] == {
        (JWKS, "GET", "200"): 2,
        (JWKS, "HEAD", "200"): 1,
        ("/jwks.json", "GET", "200"): 1,
        (JWKS, "GET", "304"): 1,
        (JWKS, "HEAD", "304"): 1,
    }


def _fetch_counts(app: web.Application) -> dict[str, float]:
    return {
        sample.labels["client"]: sample.value
        for family in text_string_to_metric_families(_metrics_text(app))
        for sample in family.samples
        if sample.name == "signing_key_sidecar_jwks_fetches_total"
    }


async def test_jwks_fetches_are_counted_by_the_user_agents_product_on_both_paths():
    sequence = (
        req("GET", JWKS, "1.1", "User-Agent: Envoy/1.40.0") + req("GET", JWKS, "1.1", "User-Agent: Envoy/1.40.1")
        + req("HEAD", JWKS, "1.1", "User-Agent: oauth2-proxy/v7.15.6", "If-None-Match: *")
        + req("GET", "/jwks.json", "1.1", "User-Agent: Java/21.0.5") + req()
        + req("GET", JWKS, "1.1", "User-Agent: (compatible; bot)")
        + close("GET", "/metrics", "User-Agent: Envoy/1.40.0")  # not a JWKS fetch
    )
    counts = {}
    for which in ("plain", "fast"):
        async with servers() as s:
            await exchange(getattr(s, which), sequence)
            counts[which] = _fetch_counts(s.app)
    assert counts["fast"] == counts["plain"] == {"Envoy": 2, "oauth2-proxy": 1, "Java": 1, "none": 1, "invalid": 1}


async def test_random_user_agents_make_at_most_the_capped_number_of_fetch_series():
    async with servers() as s:
        agents = [f"client{n}/1.0" for n in range(MAX_CLIENT_LABELS + 20)]
        for start in range(0, len(agents), 10):
            await exchange(s.fast, b"".join(req("GET", JWKS, "1.1", f"User-Agent: {ua}") for ua in agents[start:start + 10]))
        counts = _fetch_counts(s.app)
    assert len(counts) == MAX_CLIENT_LABELS + 1
    assert counts["other"] == 20 and sum(counts.values()) == len(agents)


# ---------------------------------------------------------------- timeouts, backpressure, shutdown


async def test_idle_and_slowloris_connections_are_closed():
    async with servers(keepalive_timeout=0.3) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(req())
        assert (await read_all(reader, 0.1)).endswith(BODY)
        assert await closed(reader)  # once idle
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", s.fast)
        writer.write(b"GET /jwks.json HTTP/1.1\r\n")
        for _ in range(3):
            await asyncio.sleep(0.15)
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: 1\r\n")
        assert await closed(reader)  # a trickling request is closed too
        writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 2) == b""
    except ConnectionError:
        return True


async def test_reading_pauses_while_the_client_does_not_read(monkeypatch):
    paused = []
    original = fastpath.FastJwksProtocol.pause_writing

    def spy(self):
        paused.append(True)
        original(self)

    monkeypatch.setattr(fastpath.FastJwksProtocol, "pause_writing", spy)
    async with servers() as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.fast))
        sock.setblocking(False)
        batch = req() * 50
        n = 0
        loop = asyncio.get_running_loop()
        for _ in range(400):  # up to 20000 requests, ~13 MB of answers nobody reads yet
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, batch), 0.5)
            except asyncio.TimeoutError:
                break  # the server stopped reading: our send buffer is full too
            n += 50
        assert paused, n
        # now read everything: every request sent completely is answered, in order
        received = b""
        expected = n * len(await exchange(s.plain, req(), idle=0.1))
        while len(received) < expected:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            assert data
            received += data
        assert received.count(b"HTTP/1.1 200 OK") >= n
        assert s.fp.handed_over == 0
        sock.close()


async def test_a_client_that_never_reads_cannot_make_a_connection_queue_more_than_one_batch():
    """Finding 2 of issue 16: every pipelined request of one read was answered in one write, so
    256 KiB of small GETs from a client that never reads left hundreds of KB to MBs queued in
    the transport (721 KB here before the fix; 100 such connections took the sidecar past its
    memory limit). Now what one
    connection queues stays under the write high-water mark plus one batch of answers, plus
    at most one read of input not parsed yet, while it waits and while it drains."""
    async with servers() as s:
        answer_size = len(await exchange(s.plain, req(), idle=0.1))
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.fast))
        sock.setblocking(False)
        request = req()
        count = 256 * 1024 // len(request)
        with contextlib.suppress(asyncio.TimeoutError):  # the server stopped reading before the end
            await asyncio.wait_for(loop.sock_sendall(sock, request * count), 2)
        for _ in range(500):  # until the server has stopped reading: its write buffer is full
            if s.fp.connections and not next(iter(s.fp.connections)).transport.is_reading():
                break
            await asyncio.sleep(0.01)
        (conn,) = s.fp.connections
        transport = conn.transport
        assert not transport.is_reading()
        bound = transport.get_write_buffer_limits()[1] + fastpath.MAX_PIPELINED * answer_size
        assert transport.get_write_buffer_size() <= bound, (transport.get_write_buffer_size(), bound)
        queued = [transport.get_write_buffer_size()]
        unread = [len(conn.unread) - conn.unread_at]
        received = bytearray()  # now read everything, checking the bound at every step
        while received.count(b"HTTP/1.1 200 OK") < count:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            except asyncio.TimeoutError:
                break  # only if not every request was answered: the assertions below say so
            assert data
            received += data
            queued.append(transport.get_write_buffer_size())
            unread.append(len(conn.unread) - conn.unread_at)
        assert max(queued) <= bound, (max(queued), bound)
        assert max(unread) <= transport.max_size  # one read, as asyncio reads at most
        assert received.count(b"HTTP/1.1 200 OK") == count == s.fp.answered  # every one, in order
        assert len(received) == count * answer_size and received.endswith(BODY)
        assert transport.is_reading() and s.fp.handed_over == 0  # reading resumed once drained
        await loop.sock_sendall(sock, close())
        assert (await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)).startswith(b"HTTP/1.1 200 OK")
        sock.close()


async def test_shutdown_closes_fast_path_and_handed_over_connections():
    async with servers() as s:
        r1, w1 = await asyncio.open_connection("127.0.0.1", s.fast)
        w1.write(req())
        assert (await read_all(r1, 0.1)).endswith(BODY)
        r2, w2 = await asyncio.open_connection("127.0.0.1", s.fast)
        w2.write(req("GET", "/healthz"))
        assert (await read_all(r2, 0.1)).endswith(b"ok\n")
        r3, w3 = await asyncio.open_connection("127.0.0.1", s.fast)
        w3.write(b"GET /jwks.json HTTP/1.1\r\nHo")  # a partial request
        await asyncio.sleep(0.05)
        s.app[LIFECYCLE].draining = True
        await asyncio.wait_for(s.runner.cleanup(), 5)
        for r in (r1, r2, r3):
            assert await asyncio.wait_for(r.read(), 2) == b""
        assert not s.fp.connections
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", s.fast)
        for w in (w1, w2, w3):
            w.close()
