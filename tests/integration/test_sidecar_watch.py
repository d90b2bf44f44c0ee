"""The JWKS sidecar's watch source (`serve --configmap NS/NAME`) against the real control plane.

The sidecar runs as users run it: `python -m signing_key_operator serve` in a process of its own,
on loopback, with a kubeconfig for an identity whose ONLY rights are get/list/watch on that one
ConfigMap (a Role with resourceNames), which is the least privilege the sidecar claims to need.

Readiness on deletion (decided in sidecar/app.py): a deleted ConfigMap keeps the last good set
served and the sidecar stays ready (every replica sees the deletion at once; turning unready
would take them all out of the Service), while /readyz reports ``sourcePresent: false`` and the
``signing_key_sidecar_jwks_source_present`` gauge drops to 0.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config import new_client_from_config

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.core.keys import generate_key

from .harness import free_port, terminate, wait_until

JWKS = "/.well-known/jwks.json"
MAX_AGE_ANNOTATION = "signingkeys.dev/jwks-max-age"
CM_NAME = "signing-keys-jwks"
# An update must show up well within this (the design promises "within a second"; the margin is
# for a loaded CI machine, the bench measures the real figure).
PROPAGATION_BUDGET = 5.0


def jwks_of(*algs: str) -> bytes:
    """A valid JWK Set of freshly generated keys (made at test time, never stored)."""
    return render_jwk_set([generate_key(alg).public_jwk() for alg in algs])


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def private_jwks() -> bytes:
    """A set carrying a private member ("d"): must be refused."""
    key = generate_key("ES256")
    return json.dumps({"keys": [key.private_jwk()]}).encode()


class Sidecar:
    """`signing-key-operator serve --configmap ...` on 127.0.0.1, logging to a file."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signing_key_operator", "serve",
                 "--configmap", f"{namespace}/{name}", "--kubeconfig", str(kubeconfig),
                 "--host", "127.0.0.1", "--port", str(self.port), "--shutdown-delay", "0", *extra],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None):
        """(status, headers, body); (None, {}, b"") while the server does not listen yet."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (ConnectionRefusedError, ConnectionResetError):
            return None, {}, b""
        finally:
            conn.close()

    def readyz(self) -> tuple[int | None, dict]:
        status, _, body = self.request("/readyz")
        return status, (json.loads(body) if body else {})

    def metric(self, name: str, labels: str = "") -> float | None:
        _, _, body = self.request("/metrics")
        pattern = re.compile(rf"^{re.escape(name)}{re.escape('{' + labels + '}' if labels else '')} (\S+)$", re.M)
        m = pattern.search(body.decode())
        return float(m.group(1)) if m else None

    def wait_etag(self, etag: str, timeout: float = PROPAGATION_BUDGET) -> float:
        """Seconds until /.well-known/jwks.json answers 200 with ``etag``."""
        start = time.monotonic()

        def served():
            assert self.process.poll() is None, f"sidecar exited:\n{self.log()}"
            status, headers, _ = self.request(JWKS)
            return status == 200 and headers.get("etag") == etag

        wait_until(served, timeout, f"the sidecar to serve ETag {etag}", interval=0.02)
        return time.monotonic() - start

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        terminate(self.process, grace=10)


@pytest.fixture
def reader_kubeconfig(dev_cluster, api_client, namespace) -> Path:
    """A kubeconfig for a user allowed ONLY get/list/watch on ConfigMap CM_NAME in `namespace`."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    user = f"jwks-sidecar-{namespace}"
    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="jwks-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"],
                                   resource_names=[CM_NAME], verbs=["get", "list", "watch"])],
    ))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="jwks-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="jwks-reader"),
        subjects=[client.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")],
    ))
    kubeconfig = dev_cluster.kubeconfig_for(user)
    # RBAC reaches the authorizer through an informer: wait until the grant is in effect.
    authz = client.AuthorizationV1Api(api_client)

    def allowed():
        review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb="watch", resource="configmaps", name=CM_NAME))))
        return review.status.allowed

    wait_until(allowed, 15, "the Role to take effect")
    return kubeconfig


@pytest.fixture
def configmaps(api_client, namespace):
    core = client.CoreV1Api(api_client)

    class ConfigMaps:
        def create(self, body: bytes, max_age: int | None = None) -> None:
            annotations = {MAX_AGE_ANNOTATION: str(max_age)} if max_age is not None else None
            core.create_namespaced_config_map(namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=CM_NAME, annotations=annotations),
                data={"jwks.json": body.decode()}))

        def update(self, body: bytes | None = None, max_age: int | None = None) -> None:
            patch: dict = {}
            if body is not None:
                patch["data"] = {"jwks.json": body.decode()}
            if max_age is not None:
                patch["metadata"] = {"annotations": {MAX_AGE_ANNOTATION: str(max_age)}}
            core.patch_namespaced_config_map(CM_NAME, namespace, patch)

        def delete(self) -> None:
            core.delete_namespaced_config_map(CM_NAME, namespace)

    return ConfigMaps()


@pytest.fixture
def start_sidecar(reader_kubeconfig, namespace, tmp_path):
    started: list[Sidecar] = []

    def start(*extra: str) -> Sidecar:
        sidecar = Sidecar(reader_kubeconfig, namespace, CM_NAME, tmp_path / f"sidecar-{len(started)}.log", *extra)
        started.append(sidecar)
        wait_until(lambda: sidecar.request("/healthz")[0] == 200 or sidecar.process.poll() is not None,
                   30, "the sidecar to listen")
        assert sidecar.process.poll() is None, f"sidecar exited:\n{sidecar.log()}"
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


def test_the_reader_identity_has_only_get_list_watch_on_that_configmap(reader_kubeconfig, configmaps, api_client,
                                                                       namespace):
    configmaps.create(jwks_of("ES256"))
    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other"), data={"a": "b"}))
    reader = new_client_from_config(config_file=str(reader_kubeconfig))
    try:
        core = client.CoreV1Api(reader)
        assert core.read_namespaced_config_map(CM_NAME, namespace).data["jwks.json"]
        assert len(core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={CM_NAME}").items) == 1
        denied = [
            lambda: core.read_namespaced_config_map("other", namespace),
            lambda: core.list_namespaced_config_map(namespace),
            lambda: core.patch_namespaced_config_map(CM_NAME, namespace, {"data": {"x": "y"}}),
            lambda: core.delete_namespaced_config_map(CM_NAME, namespace),
            lambda: core.list_namespaced_secret(namespace),
        ]
        for call in denied:
            with pytest.raises(ApiException) as exc:
                call()
            assert exc.value.status == 403
    finally:
        reader.close()


def test_not_ready_until_the_configmap_exists_then_serves_it(start_sidecar, configmaps):
    sidecar = start_sidecar()
    # Wait until the sidecar has listed and found nothing (sourcePresent false), not just started.
    wait_until(lambda: sidecar.readyz()[1].get("sourcePresent") is False, 15, "the sidecar to list the ConfigMap")
    status, body = sidecar.readyz()
    assert status == 503 and body["ready"] is False
    status, headers, _ = sidecar.request(JWKS)
    assert status == 503 and "no-store" not in headers.get("cache-control", "")

    jwks = jwks_of("ES256", "RS256")
    configmaps.create(jwks)
    sidecar.wait_etag(etag_of(jwks))
    status, body = sidecar.readyz()
    assert status == 200 and body["ready"] is True and body["sourcePresent"] is True
    assert sidecar.metric("signing_key_sidecar_ready") == 1


def test_initial_load_serves_the_exact_bytes_with_a_strong_etag(start_sidecar, configmaps):
    jwks = jwks_of("ES256", "EdDSA", "RS256")
    configmaps.create(jwks)
    sidecar = start_sidecar()
    sidecar.wait_etag(etag_of(jwks), timeout=15)

    status, headers, body = sidecar.request(JWKS)
    assert status == 200
    assert body == jwks
    assert headers["etag"] == etag_of(jwks) and not headers["etag"].startswith("W/")
    assert headers["content-type"] == "application/jwk-set+json"
    assert headers["cache-control"] == "public, max-age=60"  # no annotation, no --max-age: default
    assert "last-modified" in headers
    status, head_headers, head_body = sidecar.request(JWKS, method="HEAD")
    assert status == 200 and head_body == b"" and head_headers["etag"] == headers["etag"]
    assert sidecar.request("/jwks.json")[2] == jwks
    assert sidecar.metric("signing_key_sidecar_jwks_generation") == 1
    assert sidecar.metric("signing_key_sidecar_jwks_keys_served") == 3


def test_an_update_is_served_quickly_with_a_new_etag(start_sidecar, configmaps):
    first = jwks_of("ES256")
    configmaps.create(first)
    sidecar = start_sidecar()
    sidecar.wait_etag(etag_of(first), timeout=15)

    for n in range(3):
        new = jwks_of("ES256", "ES256")
        configmaps.update(new)
        took = sidecar.wait_etag(etag_of(new))
        assert took < PROPAGATION_BUDGET
        assert sidecar.request(JWKS)[2] == new
    assert sidecar.metric("signing_key_sidecar_jwks_generation") == 4


def test_if_none_match_gives_304(start_sidecar, configmaps):
    jwks = jwks_of("ES256")
    configmaps.create(jwks, max_age=30)
    sidecar = start_sidecar()
    etag = etag_of(jwks)
    sidecar.wait_etag(etag, timeout=15)

    status, headers, body = sidecar.request(JWKS, headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    assert headers["etag"] == etag and headers["cache-control"] == "public, max-age=30"
    assert sidecar.request(JWKS, headers={"If-None-Match": f'"nope", W/{etag}'})[0] == 304
    assert sidecar.request(JWKS, headers={"If-None-Match": '"an-older-set"'})[0] == 200

    # After an update the old ETag no longer matches: the client gets the new set.
    new = jwks_of("ES256", "ES384")
    configmaps.update(new)
    sidecar.wait_etag(etag_of(new))
    status, headers, body = sidecar.request(JWKS, headers={"If-None-Match": etag})
    assert status == 200 and body == new and headers["etag"] == etag_of(new)


def test_max_age_comes_from_the_configmap_annotation(start_sidecar, configmaps):
    jwks = jwks_of("ES256")
    configmaps.create(jwks, max_age=17)
    sidecar = start_sidecar()
    sidecar.wait_etag(etag_of(jwks), timeout=15)
    assert sidecar.request(JWKS)[1]["cache-control"] == "public, max-age=17"

    # A change of the annotation alone is applied (same set, same ETag, same generation).
    configmaps.update(max_age=42)
    wait_until(lambda: sidecar.request(JWKS)[1].get("cache-control") == "public, max-age=42",
               PROPAGATION_BUDGET, "the new max-age")
    assert sidecar.request(JWKS)[1]["etag"] == etag_of(jwks)
    assert sidecar.metric("signing_key_sidecar_jwks_generation") == 1


def test_max_age_flag_overrides_the_annotation(start_sidecar, configmaps):
    jwks = jwks_of("ES256")
    configmaps.create(jwks, max_age=17)
    sidecar = start_sidecar("--max-age", "5")
    sidecar.wait_etag(etag_of(jwks), timeout=15)
    assert sidecar.request(JWKS)[1]["cache-control"] == "public, max-age=5"


@pytest.mark.parametrize("bad, reason", [
    (None, "private_member"),  # filled in by the test: a freshly generated private JWK
    (b'{"keys": [', "invalid_json"),
    (b'{"keys": []}', "empty"),
])
def test_bad_content_keeps_the_last_good_set_and_is_counted(start_sidecar, configmaps, bad, reason):
    good = jwks_of("ES256", "RS256")
    configmaps.create(good)
    sidecar = start_sidecar()
    sidecar.wait_etag(etag_of(good), timeout=15)
    refused = f'reason="{reason}"'
    assert sidecar.metric("signing_key_sidecar_jwks_reloads_refused_total", refused) is None

    configmaps.update(bad if bad is not None else private_jwks())
    wait_until(lambda: sidecar.metric("signing_key_sidecar_jwks_reloads_refused_total", refused) == 1,
               PROPAGATION_BUDGET, f"the refusal ({reason}) to be counted")
    status, headers, body = sidecar.request(JWKS)
    assert status == 200 and body == good and headers["etag"] == etag_of(good)
    assert sidecar.readyz()[0] == 200
    assert sidecar.metric("signing_key_sidecar_jwks_generation") == 1
    assert "refused" in sidecar.log() and '"d"' not in sidecar.log()  # logged, never the content

    # The watch is still alive: the next good set is served.
    fixed = jwks_of("ES256")
    configmaps.update(fixed)
    sidecar.wait_etag(etag_of(fixed))
    assert sidecar.metric("signing_key_sidecar_jwks_generation") == 2


def test_a_deleted_configmap_keeps_the_last_good_set_and_a_recreated_one_is_picked_up(start_sidecar, configmaps):
    good = jwks_of("ES256", "EdDSA")
    configmaps.create(good, max_age=20)
    sidecar = start_sidecar()
    sidecar.wait_etag(etag_of(good), timeout=15)
    assert sidecar.metric("signing_key_sidecar_jwks_source_present") == 1

    configmaps.delete()
    wait_until(lambda: sidecar.readyz()[1].get("sourcePresent") is False, PROPAGATION_BUDGET,
               "the sidecar to see the deletion")
    # Decision documented in sidecar/app.py: keep serving the last good set and stay ready.
    status, body = sidecar.readyz()
    assert status == 200 and body["ready"] is True and body["generation"] == 1
    status, headers, served = sidecar.request(JWKS)
    assert status == 200 and served == good and headers["etag"] == etag_of(good)
    assert headers["cache-control"] == "public, max-age=20"
    assert sidecar.metric("signing_key_sidecar_jwks_source_present") == 0
    assert sidecar.metric("signing_key_sidecar_ready") == 1

    recreated = jwks_of("ES256")
    configmaps.create(recreated, max_age=9)
    sidecar.wait_etag(etag_of(recreated))
    status, headers, served = sidecar.request(JWKS)
    assert served == recreated and headers["cache-control"] == "public, max-age=9"
    status, body = sidecar.readyz()
    assert status == 200 and body["sourcePresent"] is True and body["generation"] == 2
    assert sidecar.metric("signing_key_sidecar_jwks_source_present") == 1
