"""sidecar/cli.py: arguments, and a real process serving and shutting down on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.sidecar import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve")
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_exactly_one_source_is_required(capsys):
    with pytest.raises(SystemExit):
        parse()
    with pytest.raises(SystemExit):
        parse("--jwks-file", "/x", "--configmap", "ns/name")
    for bad in ("name", "ns/", "/name", "a/b/c"):
        with pytest.raises(SystemExit):
            parse("--configmap", bad)
    with pytest.raises(SystemExit):
        parse("--jwks-file", "/x", "--max-age", "-1")


def test_defaults_and_settings():
    args = parse("--configmap", "team-a/jwks")
    assert args.configmap == ("team-a", "jwks")
    s = cli.settings_from_args(args)
    assert (s.host, s.port, s.max_age, s.issuer, s.data_key) == ("0.0.0.0", 8080, None, None, "jwks.json")
    args = parse("--jwks-file", "/etc/jwks", "--key", "keys.json", "--port", "9000", "--host", "127.0.0.1",
                 "--max-age", "30", "--issuer", "https://issuer.example", "--kubeconfig", "/kc")
    s = cli.settings_from_args(args)
    expected = ("127.0.0.1", 9000, 30, "https://issuer.example", "keys.json")
    assert (s.host, s.port, s.max_age, s.issuer, s.data_key) == expected
    assert args.kubeconfig == "/kc"


def test_invalid_settings_exit_2(tmp_path):
    assert cli.run(parse("--jwks-file", str(tmp_path), "--issuer", "not-a-url")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_process_serves_and_shuts_down_gracefully_on_sigterm(tmp_path):
    key = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
    body = render_jwk_set([{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES256"}])
    (tmp_path / "jwks.json").write_bytes(body)
    port = _free_port()
    code = (
        "import argparse, sys\n"
        "from signing_key_operator.sidecar import cli\n"
        "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
        "sys.exit(cli.run(p.parse_args(sys.argv[1:])))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--jwks-file", str(tmp_path), "--host", "127.0.0.1", "--port", str(port),
         "--shutdown-delay", "0.5", "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10
            while True:
                try:
                    async with http.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "sidecar did not become ready"
                await asyncio.sleep(0.05)
            async with http.get(base + "/.well-known/jwks.json") as resp:
                assert resp.status == 200 and await resp.read() == body
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            # draining: not ready any more, but verifiers are still answered
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 503 and (await resp.json())["reason"] == "shutting down"
            async with http.get(base + "/.well-known/jwks.json") as resp:
                assert resp.status == 200
        rc = await asyncio.to_thread(proc.wait, 10)
        out = proc.stdout.read().decode()
        assert rc == 0, out
        assert "serving JWK Set generation 1" in out and "stopped" in out
        assert '"d"' not in out and json.dumps(body.decode()) not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
