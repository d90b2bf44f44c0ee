"""tests/served_endpoint.py: the lag, stick() and every fault do what they say, over HTTP and TLS."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.served_endpoint import FAULTS, OVERSIZED_BYTES, LaggingEndpoint, ServingTls

TIMEOUT = 10.0
"""Client timeout where nothing should be slow: generous, the machine is small and busy."""


class Upstream:
    """A stdlib server whose JWK Set the test changes; stands in for the sidecar."""

    def __init__(self) -> None:
        self.kids = ["k1"]
        self.etag = '"v1"'
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": kid}
                                            for kid in upstream.kids]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", upstream.etag)
                self.send_header("Cache-Control", "max-age=60")
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def publish(self, *kids: str) -> None:
        self.kids = list(kids)
        self.etag = f'"{"-".join(kids)}"'

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def get(url: str, *, timeout: float = TIMEOUT, context: ssl.SSLContext | None = None, agent: str | None = None):
    headers = {"User-Agent": agent} if agent else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout, context=context) as response:
        return response.status, dict(response.headers), response.read()


def kids_at(url: str) -> list[str]:
    return [key["kid"] for key in json.loads(get(url)[2])["keys"]]


def wait_until(condition, timeout: float = TIMEOUT, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


# ---------------------------------------------------------------- lag


def test_a_change_upstream_is_served_only_after_the_lag(upstream):
    with LaggingEndpoint(upstream.url, lag=0.5, poll=0.05) as endpoint:
        assert wait_until(lambda: endpoint.served_kids() == ["k1"])
        status, headers, _ = get(endpoint.url)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert headers["ETag"] == '"v1"' and headers["Cache-Control"] == "max-age=60"

        upstream.publish("k1", "k2")
        changed = time.monotonic()
        first_seen = None
        while time.monotonic() < changed + 5:
            started = time.monotonic()
            kids = kids_at(endpoint.url)
            answered = time.monotonic()
            if "k2" in kids:
                first_seen = started
                # The answer came back at least 0.4 s after the change, however late the request ran.
                assert answered - changed >= 0.4
                break
            time.sleep(0.02)
        assert first_seen is not None, "never served the change"
        assert first_seen - changed <= 1.5
        assert get(endpoint.url)[1]["ETag"] == '"k1-k2"'


def test_nothing_is_served_until_a_snapshot_is_as_old_as_the_lag(upstream):
    with LaggingEndpoint(upstream.url, lag=3.0) as endpoint:
        with pytest.raises(urllib.error.HTTPError) as raised:
            get(endpoint.url)
        assert raised.value.code == 503
        assert endpoint.served_kids() == []
        # Lowering the lag takes effect for the next request.
        endpoint.lag = 0
        assert kids_at(endpoint.url) == ["k1"]


def test_an_upstream_outage_is_served_as_502_after_the_lag(upstream):
    with LaggingEndpoint(upstream.url, lag=0.3, poll=0.05) as endpoint:
        assert wait_until(lambda: endpoint.served_kids() == ["k1"])
        upstream.close()
        gone = time.monotonic()

        def bad_gateway() -> bool:
            try:
                get(endpoint.url)
            except urllib.error.HTTPError as error:
                return error.code == 502
            return False

        assert wait_until(bad_gateway)
        assert time.monotonic() - gone >= 0.3
        assert endpoint.served_kids() == []


# ---------------------------------------------------------------- stick


def test_a_stuck_endpoint_ignores_upstream_until_unstuck(upstream):
    with LaggingEndpoint(upstream.url, poll=0.05) as endpoint:
        assert kids_at(endpoint.url) == ["k1"]
        endpoint.stick()
        upstream.publish("k1", "k2")
        time.sleep(0.5)  # ten polls: upstream's change is in the history by now
        assert kids_at(endpoint.url) == ["k1"]
        assert endpoint.served_kids() == ["k1"]
        endpoint.unstick()
        assert wait_until(lambda: kids_at(endpoint.url) == ["k1", "k2"])


# ---------------------------------------------------------------- faults


@pytest.fixture
def endpoint(upstream):
    with LaggingEndpoint(upstream.url) as served:
        yield served


def test_fault_status_500(endpoint):
    endpoint.fault("status-500")
    with pytest.raises(urllib.error.HTTPError) as raised:
        get(endpoint.url)
    assert raised.value.code == 500


def test_fault_redirect_loop(endpoint):
    endpoint.fault("redirect-loop")
    with pytest.raises(urllib.error.HTTPError) as raised:
        get(endpoint.url)
    assert raised.value.code == 302
    assert "redirect" in str(raised.value.reason).lower()
    assert endpoint.requests > 1  # it did follow a few hops before giving up


def test_fault_oversized(endpoint):
    endpoint.fault("oversized")
    status, _, body = get(endpoint.url)
    assert status == 200 and len(body) > OVERSIZED_BYTES
    document = json.loads(body)
    assert [key["kid"] for key in document["keys"]] == ["k1"]


def test_fault_invalid_json(endpoint):
    endpoint.fault("invalid-json")
    status, _, body = get(endpoint.url)
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)


def test_fault_not_a_jwks(endpoint):
    endpoint.fault("not-a-jwks")
    status, _, body = get(endpoint.url)
    assert status == 200 and "keys" not in json.loads(body)


def test_fault_slow_outlasts_a_client_timeout(endpoint):
    endpoint.fault("slow")
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)) as raised:
        get(endpoint.url, timeout=1.0)
    if isinstance(raised.value, urllib.error.URLError):
        assert isinstance(raised.value.reason, TimeoutError)
    assert time.monotonic() - started < 5


def test_fault_slow_ends_with_stop(upstream):
    endpoint = LaggingEndpoint(upstream.url).start()
    endpoint.fault("slow")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(endpoint.url, timeout=0.5)
    started = time.monotonic()
    endpoint.stop()
    assert time.monotonic() - started < 5


def test_fault_reset(endpoint):
    endpoint.fault("reset")
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        get(endpoint.url)


def test_back_to_behaving_after_a_fault(endpoint):
    endpoint.fault("status-500")
    endpoint.fault(None)
    assert kids_at(endpoint.url) == ["k1"]


def test_an_unknown_fault_is_refused(endpoint):
    with pytest.raises(ValueError):
        endpoint.fault("gremlins")
    assert len(FAULTS) == 7


# ---------------------------------------------------------------- TLS


def test_tls_with_a_trusted_certificate(upstream, tmp_path):
    tls = ServingTls.generate(tmp_path)
    with LaggingEndpoint(upstream.url, tls=tls) as endpoint:
        assert endpoint.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cadata=tls.ca_pem)
        status, _, body = get(endpoint.url, context=context)
        assert status == 200 and [key["kid"] for key in json.loads(body)["keys"]] == ["k1"]
        # localhost is in the certificate too
        localhost = endpoint.url.replace("127.0.0.1", "localhost")
        assert get(localhost, context=tls.client_context())[0] == 200
        endpoint.fault("reset")
        with pytest.raises((ConnectionError, urllib.error.URLError, ssl.SSLError)):
            get(endpoint.url, context=context)


def test_tls_with_an_untrusted_certificate_fails_verification(upstream, tmp_path):
    tls = ServingTls.generate(tmp_path, trusted=False)
    with LaggingEndpoint(upstream.url, tls=tls) as endpoint:
        with pytest.raises(urllib.error.URLError) as raised:
            get(endpoint.url, context=ssl.create_default_context(cadata=tls.ca_pem))
        assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)
        # The server survives a client that gave up in the handshake.
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        assert get(endpoint.url, context=unverified)[0] == 200


# ---------------------------------------------------------------- counts


def test_requests_and_user_agents_are_counted(endpoint):
    base = endpoint.url.rsplit("/", 2)[0]
    get(endpoint.url, agent="probe/1")
    get(endpoint.url, agent="probe/1")
    get(endpoint.url, agent="verifier/2")
    endpoint.fault("status-500")
    with pytest.raises(urllib.error.HTTPError):
        get(endpoint.url, agent="probe/1")
    with pytest.raises(urllib.error.HTTPError) as raised:
        get(base + "/elsewhere", agent="probe/1")
    assert raised.value.code == 404
    assert endpoint.requests == 4
    assert endpoint.user_agents == {"probe/1": 3, "verifier/2": 1}
