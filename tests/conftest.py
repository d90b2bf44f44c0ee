"""Shared fixtures: one real control plane per test run, a fresh namespace per test.

Tests under tests/integration, tests/conformance and tests/node get the `controlplane` marker, so
`pytest -m "not controlplane"` runs only what needs no API server; tests/node also gets `node`
(a kubelet, containerd and pods: tests/node/conftest.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

NEEDS_CONTROL_PLANE = ("integration", "conformance", "node")
NEEDS_NODE = ("node",)


def pytest_collection_modifyitems(items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if any(part in NEEDS_CONTROL_PLANE for part in parts):
            item.add_marker(pytest.mark.controlplane)
        if any(part in NEEDS_NODE for part in parts):
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory):
    from signing_key_operator.devcluster.cluster import DevCluster

    cluster = DevCluster(tmp_path_factory.mktemp("devcluster"))
    cluster.up()
    yield cluster
    cluster.down()


@pytest.fixture(scope="session")
def kubeconfig(dev_cluster) -> Path:
    return dev_cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(api_client):
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server on 127.0.0.1 (tests/redis_server.py), stopped after the test. Without
    redis-server the test is skipped with the reason, except under CI=true, where a missing
    server is a broken setup (`make test` installs it) and the test fails."""
    from tests.redis_server import RedisServer, redis_server_binary

    if redis_server_binary() is None:
        message = "redis-server is not installed (Debian package redis-server; `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true: Redis tests must run in CI", pytrace=False)
        pytest.skip(message)
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()
