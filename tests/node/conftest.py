"""One dev cluster with a real node per test run (devcluster/node.py), the image built from the
repository's Dockerfile loaded into its containerd, and the chart installed with helm as users
install it.

These tests never skip: a machine where the node cannot start fails them with the reason (a
missing Debian package, a kubelet that exits), because a chart that was never run in pods is
exactly what they exist to catch.
"""

from __future__ import annotations

import pytest

from .chart_release import NAMESPACE, POLICY, POLICY_SPEC, RELEASE, Kube, Release


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory):
    from signing_key_operator.devcluster.cluster import DevCluster
    from signing_key_operator.devcluster.tools import ensure_tools

    ensure_tools()
    cluster = DevCluster(tmp_path_factory.mktemp("nodecluster"))
    try:
        cluster.up(node=True)
    except RuntimeError as error:
        cluster.down()
        pytest.fail(f"the dev cluster's node did not start: {error}", pytrace=False)
    yield cluster
    cluster.down()


@pytest.fixture(scope="session")
def node_image(node_cluster) -> str:
    """The app image, built from the Dockerfile (cached by its inputs) and imported into the
    node's containerd; its reference."""
    from signing_key_operator.devcluster.image import ensure_images

    images = ensure_images()
    node_cluster.node.import_image(images.app_archive, images.app_ref)
    return images.app_ref


@pytest.fixture(scope="session")
def kube(node_cluster) -> Kube:
    return Kube(node_cluster.kubeconfig)


@pytest.fixture(scope="session")
def release(kube, node_image):
    """The chart installed once, reconfigured by each test (`Release.configure`)."""
    kube.kubectl("create", "namespace", NAMESPACE)
    kube.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")
    release = Release(kube, node_image)
    # The order a first install takes: the operator (and the CRD) first, then the policy, then
    # its JWKS server, which is ready only once the operator has published the set it serves.
    release.configure(**{"jwksServer.enabled": "false"})
    kube.apply(NAMESPACE, {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
                           "metadata": {"name": POLICY}, "spec": POLICY_SPEC})
    release.wait_ready()
    release.configure()
    yield release
    kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found")
    kube.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
