"""The client table's claims, checked against the clients the suite runs.

``core/verifier_clients.py`` says, for each client, whether it refetches on an unknown kid,
whether it keeps a cache per worker and whether it honours Cache-Control; README's client table
and the operator's defaults and ShortTimeline warning come from it. Its figures were read in
each client's source; this module asks the real clients, so a library upgrade that changes a
behaviour fails here instead of leaving the table wrong.

Each client in turn, against one file-mode sidecar serving ``max-age=1``, with its cache set
long (60 s, so that no expiry can explain a fetch) and its unknown-kid cooldown short (50 ms,
where it has one), counting the sidecar's JWKS fetches (signing_key_sidecar_jwks_fetches_total,
less this module's own polls):

1. 20 verifications of a published key's token, each on a new connection for the gateways: one
   fetch, or one per worker for a per-worker cache (Envoy: two workers);
2. after max-age has passed, one more: a client that honours Cache-Control fetches again;
3. a second key is published and a token of it verified: a client that refetches on an unknown
   kid fetches and verifies it; one that does not refuses it.

No control plane: keys, tokens and the sidecar's volume are made here.
"""

from __future__ import annotations

import json
import time

import pytest

from signing_key_operator.core.verifier_clients import VERIFIER_CLIENTS
from tests.integration.harness import wait_until
from tests.kubelet_volume import kubelet_update

from .clients import CLIENTS, VerifierProcess
from .driver import FileSidecar, new_key, sign
from .timeline import CLIENT_IDENTITY_ARGS

MAX_AGE_S = 1
LONG_CACHE_ARGS: dict[str, list[str]] = {
    # cache 60 s, unknown-kid cooldown 50 ms where there is one
    "PyJWT": ["--alg", "ES256", "--lifespan", "60", "--cooldown", "0.05"],
    "jose": ["--cache-max-age-ms", "60000", "--cooldown-ms", "50"],
    "Nimbus": ["--alg", "ES256", "--cache-ttl-ms", "60000", "--refresh-ahead-ms", "50", "--refresh-timeout-ms", "1000",
               "--rate-limit-ms", "50"],
    "Spring": ["--alg", "ES256", "--cache-ttl-ms", "60000"],
    "keyfunc": ["--refresh-interval", "60000ms", "--unknown-kid-every", "50ms", "--rate-limit-wait-max", "100ms"],
    "Envoy": ["--cache-duration-ms", "60000", "--concurrency", "2"],
    "Envoy async_fetch": ["--cache-duration-ms", "60000", "--concurrency", "2"],
    "oauth2-proxy": ["--alg", "ES256"],
}
WORKERS = {"Envoy": 2}
"""Worker threads of the clients with a cache per worker (their --concurrency above)."""


@pytest.fixture(scope="module")
def measured(verifier_builds, tmp_path_factory, summary) -> dict[str, dict[str, bool]]:
    log_dir = tmp_path_factory.mktemp("conformance-client-table")
    first_jwk, first = new_key("table-first")
    sidecar = FileSidecar(log_dir / "volume", log_dir / "sidecar.log", max_age=MAX_AGE_S)
    kubelet_update(sidecar.volume, {"jwks.json": json.dumps({"keys": [first_jwk]}).encode()})
    results: dict[str, dict[str, bool]] = {}
    try:
        wait_until(sidecar.ready, 30, "the file-mode sidecar to be ready", interval=0.1)
        for seq, client in enumerate(CLIENTS):
            sidecar.publish([first_jwk])  # the previous client's second key goes
            process = VerifierProcess(client, [*CLIENT_IDENTITY_ARGS.get(client.name, []), *LONG_CACHE_ARGS[client.name]],
                                      log_dir / f"verifier-{client.name.replace(' ', '-')}.log")
            try:
                before = sidecar.fetches()
                process.use(sidecar.url, "ES256")
                token = sign(first, seq, 600)
                for _ in range(20):
                    ok, reason = process.verify(token.value)
                    assert ok, f"{client.name} refused a token of the published key: {reason}"
                first_fetches = sidecar.fetches() - before
                time.sleep(MAX_AGE_S + 0.5)
                before = sidecar.fetches()
                ok, reason = process.verify(token.value)
                assert ok, f"{client.name}: {reason}"
                after_max_age = sidecar.fetches() - before
                second_jwk, second = new_key(f"table-second-{seq}")
                sidecar.publish([first_jwk, second_jwk])
                before = sidecar.fetches()
                new_ok, new_reason = process.verify(sign(second, seq, 600).value)
                unknown_kid_fetches = sidecar.fetches() - before
            finally:
                process.close()
            results[client.name] = {
                "per_worker_cache": first_fetches > 1,
                "first_fetches": first_fetches,
                "honours_cache_control": after_max_age > 0,
                "refetch_on_unknown_kid": new_ok and unknown_kid_fetches > 0,
                "unknown_kid": "verified" if new_ok else f"refused: {new_reason}",
                "unknown_kid_fetches": unknown_kid_fetches,
            }
    finally:
        sidecar.stop()
    summary["client_table"] = results
    return results


def _row(client: str):
    return next(row for row in VERIFIER_CLIENTS if client in row.conformance)


@pytest.mark.parametrize("client", [client.name for client in CLIENTS])
def test_the_client_table_says_what_the_client_does(measured, client):
    row, seen = _row(client), measured[client]
    assert seen["refetch_on_unknown_kid"] == row.refetch_on_unknown_kid, (row.name, seen)
    assert seen["honours_cache_control"] == row.honours_cache_control, (row.name, seen)
    per_worker = row.per_worker_cache and "--async-fetch" not in next(c for c in CLIENTS if c.name == client).mode
    assert seen["per_worker_cache"] == per_worker, (row.name, seen)
    if per_worker:
        assert seen["first_fetches"] == WORKERS[client], seen
    else:
        assert seen["first_fetches"] == 1, seen
