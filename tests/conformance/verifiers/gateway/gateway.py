"""Gateway verifier for the conformance suite: a real Envoy (``jwt_authn``) or oauth2-proxy in
front of a static upstream, asked the way an API client asks it: an HTTP request with the
token as a bearer credential. 200 is a verified token; anything else a refused one.

The gateways are servers, not libraries, so this adapter owns one gateway process and speaks
the suite's line protocol for it (stdin/stdout, one line each way): a JWT answers ``ok`` or
``fail: <reason>``; ``url <URL> [ALG]`` restarts the gateway for that JWKS URL (and algorithm)
and answers ``ready``. Standard library only: it runs with any python3.

Every request opens a new connection: Envoy hands each connection to one worker thread, and
without ``async_fetch`` every worker keeps its own JWKS cache, so fresh connections (spread
over the workers by the kernel's SO_REUSEPORT hash) are what exercise the per-worker caches,
as a gateway's many clients do.

    gateway.py envoy --envoy BIN --url URL --issuer ISS [--cache-duration-ms N] [--async-fetch]
                     [--concurrency N] [--clock-skew-s N]
    gateway.py oauth2-proxy --oauth2-proxy BIN --url URL --issuer ISS --audience AUD [--alg ALG]

Absent flags keep the gateway's defaults (Envoy: cache_duration 10 min, clock_skew_seconds 60;
oauth2-proxy has no knob for its key cache: go-oidc keeps keys until a verification fails).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

READY_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_status(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Gateway:
    """One gateway process; ``start`` for a JWKS URL, ``verify`` a token, ``stop``."""

    name = ""

    def __init__(self, args: argparse.Namespace, workdir: Path, output=None) -> None:
        self.args = args
        self.workdir = workdir
        self.output = output if output is not None else sys.stderr
        """Where the gateway's own output goes: this adapter's stderr, which the suite keeps as
        the client's log (a benchmark passes a file)."""
        self.process: subprocess.Popen | None = None
        self.port = 0

    def command(self, url: str, alg: str) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, url: str, alg: str) -> None:
        self.stop()
        self.port = free_port()
        self.process = subprocess.Popen(self.command(url, alg), stdout=self.output, stderr=self.output,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S}s")

    def verify(self, token: str) -> str:
        if self.process is None or self.process.poll() is not None:
            return f"fail: {self.name} is not running"
        status, body = _http_status(self.port, "/api", {"Authorization": f"Bearer {token}", "Accept": "application/json"})
        if status == 200:
            return "ok"
        return f"fail: HTTP {status} {body[:160].decode(errors='replace')}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Envoy(Gateway):
    """Envoy with the jwt_authn filter: one provider with a remote_jwks, required on every path,
    in front of a direct response (the static upstream)."""

    name = "envoy"

    def command(self, url: str, alg: str) -> list[str]:
        self.admin_port = free_port()
        parsed = urllib.parse.urlsplit(url)
        remote_jwks: dict = {"http_uri": {"uri": url, "cluster": "jwks", "timeout": "5s"}}
        if self.args.cache_duration_ms is not None:
            remote_jwks["cache_duration"] = f"{self.args.cache_duration_ms / 1000:.3f}s"
        if self.args.async_fetch:
            remote_jwks["async_fetch"] = {}
        provider: dict = {"issuer": self.args.issuer, "remote_jwks": remote_jwks}
        if self.args.clock_skew_s is not None:
            provider["clock_skew_seconds"] = self.args.clock_skew_s
        config = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "api",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "api",
                            "route_config": {"virtual_hosts": [{
                                "name": "api", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"},
                                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
                            }]},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.jwt_authn",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                                        "providers": {"policy": provider},
                                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "policy"}}],
                                    },
                                },
                                {"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                            ],
                        },
                    }]}],
                }],
                "clusters": [{
                    "name": "jwks", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "jwks", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": parsed.hostname, "port_value": parsed.port or 80}}}}]}]},
                }],
            },
        }
        path = self.workdir / "envoy.json"
        path.write_text(json.dumps(config))
        return [self.args.envoy, "-c", str(path), "--concurrency", str(self.args.concurrency),
                "--log-level", "warning", "--disable-hot-restart"]

    def ready(self) -> bool:
        # LIVE only once the listener is up; without fast_listener, async_fetch's first fetch
        # is done before the listener opens.
        status, body = _http_status(self.admin_port, "/ready")
        return status == 200 and body.strip() == b"LIVE" and self._listening()

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


class OAuth2Proxy(Gateway):
    """oauth2-proxy verifying bearer tokens against a JWKS URL (no OIDC discovery, no login
    flow), in front of a static upstream; ``--api-route`` makes a refusal a 401, as for an API,
    instead of a redirect to a login page."""

    name = "oauth2-proxy"

    def command(self, url: str, alg: str) -> list[str]:
        return [
            self.args.oauth2_proxy,
            f"--http-address=127.0.0.1:{self.port}",
            "--provider=oidc",
            f"--oidc-issuer-url={self.args.issuer}",
            "--skip-oidc-discovery",
            f"--oidc-jwks-url={url}",
            f"--oidc-enabled-signing-alg={alg}",
            f"--client-id={self.args.audience}",
            "--client-secret=unused-no-login-flow",
            # The login flow is never used; these are required all the same.
            "--login-url=http://127.0.0.1:9/login",
            "--redeem-url=http://127.0.0.1:9/token",
            f"--cookie-secret={secrets.token_hex(16)}",
            "--email-domain=*",
            "--upstream=static://200",
            "--skip-jwt-bearer-tokens",
            "--api-route=^/api",
            "--skip-provider-button",
            "--request-logging=false",
        ]

    def ready(self) -> bool:
        status, _ = _http_status(self.port, "/ping")
        return status == 200


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("gateway", choices=("envoy", "oauth2-proxy"))
    parser.add_argument("--envoy")
    parser.add_argument("--oauth2-proxy")
    parser.add_argument("--url")
    parser.add_argument("--alg", default="RS256")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience")
    parser.add_argument("--cache-duration-ms", type=float)
    parser.add_argument("--async-fetch", action="store_true")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--clock-skew-s", type=int)
    args = parser.parse_args()
    if args.gateway == "envoy" and not args.envoy:
        parser.error("envoy needs --envoy BIN")
    if args.gateway == "oauth2-proxy" and not (args.oauth2_proxy and args.audience):
        parser.error("oauth2-proxy needs --oauth2-proxy BIN and --audience")

    with tempfile.TemporaryDirectory(prefix=f"conformance-{args.gateway}-", dir=os.environ.get("SKO_GATEWAY_WORKDIR")) as workdir:
        gateway = (Envoy if args.gateway == "envoy" else OAuth2Proxy)(args, Path(workdir))
        try:
            if args.url:
                gateway.start(args.url, args.alg)
            for raw in sys.stdin:
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("url "):
                    parts = line.split()
                    try:
                        gateway.start(parts[1], parts[2] if len(parts) > 2 else args.alg)
                        answer = "ready"
                    except Exception as error:  # noqa: BLE001 - reported to the driver
                        answer = f"fail: {type(error).__name__}: {error}"
                elif gateway.process is None:
                    answer = "fail: no JWKS URL yet"
                else:
                    try:
                        answer = gateway.verify(line)
                    except OSError as error:
                        answer = f"fail: {type(error).__name__}: {error}"
                sys.stdout.write(" ".join(answer.split()) + "\n")
                sys.stdout.flush()
        finally:
            gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
