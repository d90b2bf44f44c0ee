"""A JWKS endpoint that lags, sticks or misbehaves, for tests of probes that read back a served set.

Verifiers rarely fetch from our sidecar directly: a CDN, a proxy or a slow volume sits in between and
serves an older copy. This stands in for that hop: it polls the real server and answers with what
that server said `lag` seconds ago, can freeze, and can fail in each way a probe must survive.

    with LaggingEndpoint(sidecar_url, lag=2.0) as endpoint:   # endpoint.url is what a probe reads
        endpoint.stick(); endpoint.fault("reset"); endpoint.fault(None)

Stdlib HTTP only (a server thread and a poller thread), 127.0.0.1 only; `cryptography` makes the
TLS certificates.
"""

from __future__ import annotations

import collections
import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STATUS_500 = "status-500"
REDIRECT_LOOP = "redirect-loop"
OVERSIZED = "oversized"
INVALID_JSON = "invalid-json"
NOT_A_JWKS = "not-a-jwks"
SLOW = "slow"
RESET = "reset"
FAULTS = (STATUS_500, REDIRECT_LOOP, OVERSIZED, INVALID_JSON, NOT_A_JWKS, SLOW, RESET)

SLOW_SECONDS = 30.0
"""Far longer than any probe timeout, so the probe's own timeout is what ends the request."""

OVERSIZED_BYTES = 2 * 1024 * 1024
"""Twice what a ConfigMap can hold (core/jwks.py MAX_JWK_SET_BYTES), so no real set is this big."""

HISTORY_MARGIN = 5.0
"""Seconds of history kept beyond `lag`, so raising the lag a little still finds old snapshots."""

UPSTREAM_TIMEOUT = 5.0


@dataclass(frozen=True)
class _Snapshot:
    at: float                  # time.monotonic() when the answer had been read in full
    status: int | None         # upstream's HTTP status; None when it could not be reached
    body: bytes
    etag: str | None
    cache_control: str | None


@dataclass(frozen=True)
class ServingTls:
    """Certificate and key files for the endpoint, and the CA PEM a client should trust."""

    cert_file: Path
    key_file: Path
    ca_pem: str

    @classmethod
    def generate(cls, directory: Path, trusted: bool = True) -> "ServingTls":
        """A CA and a server certificate for 127.0.0.1 and localhost signed by it, valid one day.

        With ``trusted=False`` the server certificate signs itself and ``ca_pem`` is an unrelated CA,
        so a client that trusts ``ca_pem`` must fail verification.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, "served-endpoint test CA")
        server_key = ec.generate_private_key(ec.SECP256R1())
        if trusted:
            server_cert = _server_certificate(server_key, ca_cert.subject, ca_key)
        else:
            server_cert = _server_certificate(server_key, None, server_key)
        cert_file = directory / "server.pem"
        key_file = directory / "server-key.pem"
        cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        (directory / "ca.pem").write_text(ca_pem)
        return cls(cert_file=cert_file, key_file=key_file, ca_pem=ca_pem)

    def client_context(self) -> ssl.SSLContext:
        """What a client that trusts only ``ca_pem`` would use."""
        return ssl.create_default_context(cadata=self.ca_pem)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    # A minute back: a client clock a little behind must not see a certificate from the future.
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=1)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    not_before, not_after = _validity()
    public = key.public_key()
    # Strict verifiers (Python 3.13's VERIFY_X509_STRICT) want the key identifiers and key usage.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Clients that give up (timeouts, failed TLS handshakes, resets) are the point of these
        # tests; a traceback for each would only bury the test output.
        pass


class LaggingEndpoint:
    """Serves at `url` what `upstream` served `lag` seconds ago (a CDN or a slow volume in the way)."""

    def __init__(
        self,
        upstream: str,
        lag: float = 0.0,
        poll: float = 0.1,
        *,
        tls: ServingTls | None = None,
        path: str = "/.well-known/jwks.json",
    ) -> None:
        self.upstream = upstream
        self.poll = poll
        self.path = path
        self.tls = tls
        self._lock = threading.Lock()
        self._lag = float(lag)
        self._history: collections.deque[_Snapshot] = collections.deque()
        self._stuck = False
        self._stuck_answer: _Snapshot | None = None
        self._fault: str | None = None
        self._requests = 0
        self._user_agents: collections.Counter[str] = collections.Counter()
        self._stopped = threading.Event()
        self._server_thread: threading.Thread | None = None
        self._poller_thread: threading.Thread | None = None
        # Bound here rather than in start() so `url` is known before the endpoint serves.
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        if tls is not None:
            # No handshake in accept(): the serving loop is one thread, and a client that connects
            # but never speaks TLS must stall only its own handler thread.
            self._server.socket = tls.server_context().wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}{path}"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "LaggingEndpoint":
        if self._server_thread is not None:
            raise RuntimeError("the endpoint is already started")
        # One snapshot before serving, so with lag 0 the first request already has an answer.
        self._poll_once()
        self._poller_thread = threading.Thread(target=self._poll_loop, name="served-endpoint-poller", daemon=True)
        self._poller_thread.start()
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="served-endpoint-server", daemon=True,
        )
        self._server_thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()  # also wakes "slow" handlers
        if self._server_thread is not None:
            self._server.shutdown()
            self._server_thread.join(timeout=5)
        self._server.server_close()
        if self._poller_thread is not None:
            self._poller_thread.join(timeout=UPSTREAM_TIMEOUT + 1)

    def __enter__(self) -> "LaggingEndpoint":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ controls

    @property
    def lag(self) -> float:
        with self._lock:
            return self._lag

    @lag.setter
    def lag(self, seconds: float) -> None:
        with self._lock:
            self._lag = float(seconds)

    def stick(self) -> None:
        """Freeze: keep serving exactly what is served now, whatever upstream does."""
        with self._lock:
            if not self._stuck:
                self._stuck_answer = self._answer_locked(time.monotonic())
                self._stuck = True

    def unstick(self) -> None:
        """Back to lagging upstream by `lag` (the history kept filling while stuck)."""
        with self._lock:
            self._stuck = False
            self._stuck_answer = None

    def fault(self, mode: str | None) -> None:
        """None: behave. Otherwise one of FAULTS, for every request until changed."""
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {', '.join(FAULTS)}")
        with self._lock:
            self._fault = mode

    # ------------------------------------------------------------------ observations

    @property
    def requests(self) -> int:
        """Requests received on `path`, faulty answers included."""
        with self._lock:
            return self._requests

    @property
    def user_agents(self) -> collections.Counter[str]:
        """User-Agent of those requests ("" when there was none); a copy."""
        with self._lock:
            return collections.Counter(self._user_agents)

    def served_kids(self) -> list[str]:
        """Kids of the document it would serve now, faults aside; [] when that is not a JWK Set."""
        with self._lock:
            snapshot = self._current_locked(time.monotonic())
        return _kids(snapshot.body) if snapshot is not None and snapshot.status == 200 else []

    # ------------------------------------------------------------------ internals

    def _poll_loop(self) -> None:
        while not self._stopped.wait(self.poll):
            self._poll_once()

    def _poll_once(self) -> None:
        request = urllib.request.Request(self.upstream, headers={"User-Agent": "served-endpoint-poller"})
        try:
            with urllib.request.urlopen(request, timeout=UPSTREAM_TIMEOUT) as response:
                body = response.read()
                status, headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            status, headers, body = error.code, None, b""
        except (OSError, ValueError):  # refused, reset, timed out, or not even a URL
            status, headers, body = None, None, b""
        snapshot = _Snapshot(
            at=time.monotonic(),
            status=status,
            body=body,
            etag=headers.get("ETag") if headers is not None else None,
            cache_control=headers.get("Cache-Control") if headers is not None else None,
        )
        with self._lock:
            self._history.append(snapshot)
            self._trim_locked(snapshot.at)

    def _trim_locked(self, now: float) -> None:
        cutoff = now - self._lag
        # history[0] goes only if history[1] is old enough to answer in its place.
        while (
            len(self._history) > 1
            and self._history[0].at < cutoff - HISTORY_MARGIN
            and self._history[1].at <= cutoff
        ):
            self._history.popleft()

    def _answer_locked(self, now: float) -> _Snapshot | None:
        """The newest snapshot taken at or before now - lag, or None when none is that old yet."""
        cutoff = now - self._lag
        for snapshot in reversed(self._history):
            if snapshot.at <= cutoff:
                return snapshot
        return None

    def _current_locked(self, now: float) -> _Snapshot | None:
        return self._stuck_answer if self._stuck else self._answer_locked(now)

    def _received(self, user_agent: str) -> tuple[str | None, _Snapshot | None]:
        with self._lock:
            self._requests += 1
            self._user_agents[user_agent] += 1
            return self._fault, self._current_locked(time.monotonic())


def _kids(body: bytes) -> list[str]:
    try:
        document = json.loads(body)
    except ValueError:
        return []
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        return []
    return [key["kid"] for key in keys if isinstance(key, dict) and isinstance(key.get("kid"), str)]


def _handler_for(endpoint: LaggingEndpoint) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # HTTP/1.0: every answer closes its connection, so after stop() no pooled keep-alive
        # connection is left that would go on answering a probe.
        protocol_version = "HTTP/1.0"
        # A client that connects and never sends a request must not hold its thread for ever.
        timeout = 60

        def log_message(self, format, *args) -> None:
            pass

        def do_GET(self) -> None:
            if urllib.parse.urlsplit(self.path).path != endpoint.path:
                self._send(404, b"not here\n", "text/plain")
                return
            fault, snapshot = endpoint._received(self.headers.get("User-Agent", ""))
            if fault is None:
                self._serve(snapshot)
            elif fault == STATUS_500:
                self._send(500, b"internal error (fault status-500)\n", "text/plain")
            elif fault == REDIRECT_LOOP:
                self._send(302, b"", "text/plain", {"Location": self.path})
            elif fault == OVERSIZED:
                self._send(200, _oversized(snapshot), "application/json")
            elif fault == INVALID_JSON:
                self._send(200, b'{"keys": [', "application/json")
            elif fault == NOT_A_JWKS:
                self._send(200, b'{"hello": "world"}', "application/json")
            elif fault == SLOW:
                if not endpoint._stopped.wait(SLOW_SECONDS):
                    self._serve(snapshot)
            elif fault == RESET:
                self._reset()

        def _serve(self, snapshot: _Snapshot | None) -> None:
            # If-None-Match is not honoured: always a 200 with the body keeps the lag model simple,
            # and a probe that must read the set gets it whatever validators it sends.
            if snapshot is None:
                self._send(503, b"nothing old enough to serve yet\n", "text/plain")
            elif snapshot.status != 200:
                said = f"answered {snapshot.status}" if snapshot.status is not None else "was unreachable"
                self._send(502, f"upstream {said}\n".encode(), "text/plain")
            else:
                headers = {}
                if snapshot.etag is not None:
                    headers["ETag"] = snapshot.etag
                if snapshot.cache_control is not None:
                    headers["Cache-Control"] = snapshot.cache_control
                self._send(200, snapshot.body, "application/json", headers)

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client left first (its timeout, or it stopped reading the oversized body)

        def _reset(self) -> None:
            # Linger 0 makes close() send a RST rather than a FIN: the connection is torn down, not
            # ended, and no byte of an answer was sent. Over TLS, Python's ssl reports that RST to
            # the client as an EOF in violation of the protocol; either way there is no answer.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

    return Handler


def _oversized(snapshot: _Snapshot | None) -> bytes:
    # The real keys are in it, so a probe that reads the whole body would find the new kid: only a
    # size limit makes it refuse this answer.
    keys: list = []
    if snapshot is not None and snapshot.status == 200:
        try:
            document = json.loads(snapshot.body)
            if isinstance(document, dict) and isinstance(document.get("keys"), list):
                keys = document["keys"]
        except ValueError:
            pass
    head = json.dumps({"keys": keys})[:-1] + ', "pad": "'
    return (head + "x" * OVERSIZED_BYTES + '"}').encode()
