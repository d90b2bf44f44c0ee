"""Install the CRDs (SigningKeyPolicy, TokenRevocation) from the repository's crds/ folder (their
single source) into a dev or test cluster, and wait until the API server serves them. Used by
`demo`, the tests' fixtures and the benches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
CRD_FILE = CRD_DIR / "signingkeypolicies.yaml"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def install_crd(api_client, path: Path = CRD_FILE, timeout: float = 30) -> dict[str, Any]:
    """Create the CRD, or replace it with the file's content when it exists (idempotent: tests
    and demo runs share clusters), then wait until it is Established and actually served."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    extensions = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        for _ in range(5):  # a replace needs the current resourceVersion; retry a lost race
            body["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata.resource_version
            try:
                extensions.replace_custom_resource_definition(name, body)
                break
            except ApiException as conflict:
                if conflict.status != 409:
                    raise
        else:
            raise RuntimeError(f"could not replace {name}: it kept changing underneath")
        body["metadata"].pop("resourceVersion")

    def established() -> bool:
        conditions = {c.type: c.status for c in extensions.read_custom_resource_definition(name).status.conditions or []}
        return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"

    _wait(established, timeout, f"{name} to be Established")

    # Established can come a moment before the endpoint answers: probe it.
    group, version = body["spec"]["group"], body["spec"]["versions"][0]["name"]
    plural = body["spec"]["names"]["plural"]
    objects = client.CustomObjectsApi(api_client)

    def served() -> bool:
        try:
            objects.list_cluster_custom_object(group, version, plural, limit=1)
        except ApiException as error:
            if error.status in (404, 503):
                return False
            raise
        return True

    _wait(served, timeout, f"{plural}.{group} to be served")
    return body


def install_crds(api_client, timeout: float = 30) -> list[str]:
    """Every CRD in crds/ (see :func:`install_crd`); returns their names."""
    return [install_crd(api_client, path, timeout)["metadata"]["name"] for path in sorted(CRD_DIR.glob("*.yaml"))]
