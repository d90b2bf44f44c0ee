from __future__ import annotations

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .harness import CRD_PATH, OperatorProcess, Policies, wait_until


@pytest.fixture(scope="session")
def signingkeypolicy_crd(api_client):
    """The CRD from crds/, installed once per run (create, or replace when already there)."""
    extensions = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(CRD_PATH.read_text())
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        body["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)

    def established():
        crd = extensions.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_until(established, 30, "the SigningKeyPolicy CRD to be Established")
    return name


@pytest.fixture(scope="session")
def operator(kubeconfig, signingkeypolicy_crd, tmp_path_factory):
    """One operator process for the run; tests that kill operators start their own."""
    # Tests that run operators of their own use namespaces outside this pattern.
    process = OperatorProcess(
        kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", extra_args=["--namespace", "t-*"]
    ).start()
    yield process
    process.stop()


@pytest.fixture
def policies(api_client, namespace, signingkeypolicy_crd) -> Policies:
    return Policies(api_client, namespace)
