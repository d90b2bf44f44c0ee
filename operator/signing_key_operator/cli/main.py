"""The `signing-key-operator` command: run | serve | revoke-token | dev-cluster up|down|status|build|image | demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _dev_cluster(args: argparse.Namespace) -> int:
    from ..devcluster.cluster import DevCluster
    from ..devcluster.tools import ensure_tools

    cluster = DevCluster(Path(args.dir))
    if args.action == "image":
        return _dev_cluster_image(cluster)
    if args.action == "build":
        from ..devcluster.build import ensure_binaries, ensure_node_binaries

        try:
            ensure_tools()
            binaries = ensure_binaries()
            node = ensure_node_binaries() if args.node else None
        except RuntimeError as error:
            print(f"signing-key-operator dev-cluster build: {error}", file=sys.stderr)
            return 1
        print(f"kube-apiserver {binaries.kubernetes_version}, etcd {binaries.etcd_version}: {binaries.kube_apiserver.parent}")
        if node is not None:
            print(f"kubelet, kube-scheduler, kube-proxy {binaries.kubernetes_version}: {node.kubelet.parent}")
        return 0
    if args.action == "up":
        ensure_tools()
        try:
            cluster.up(node=args.node)
        except RuntimeError as error:
            print(f"signing-key-operator dev-cluster up: {error}", file=sys.stderr)
            return 1
        print(cluster.kubeconfig)
        return 0
    if args.action == "down":
        from .demo import stop_demo_processes

        stopped = stop_demo_processes(cluster) + cluster.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    running = cluster.running()
    state = cluster.state()
    if not running or state is None:
        print("not running")
        return 1
    for name, alive in running.items():
        print(f"{name:<24} {'running' if alive else 'stopped'}")
    ready = cluster.ready()
    print(f"{'kube-apiserver /readyz':<24} {'ok' if ready else 'not ready'} ({state.server}, {state.kubernetes_version})")
    print(f"{'kubeconfig':<24} {cluster.kubeconfig}")
    if state.node is not None and ready:
        print(cluster.describe_node())
    return 0 if ready and all(running.values()) else 1


def _dev_cluster_image(cluster) -> int:
    from ..devcluster.image import ensure_images

    state = cluster.state()
    node_running = state is not None and state.node is not None and cluster.running().get("containerd", False)
    try:
        images = ensure_images()
        if node_running:
            cluster.node.import_image(images.app_archive, images.app_ref)
            print(f"[image] loaded {images.app_ref} into the node's containerd ({cluster.node.socket})", file=sys.stderr)
        else:
            print(f"[image] no node runs in {cluster.dir} (`dev-cluster up --node`): built, not loaded", file=sys.stderr)
    except RuntimeError as error:
        print(f"signing-key-operator dev-cluster image: {error}", file=sys.stderr)
        return 1
    print(f"[image] pause image: {images.pause_ref} ({images.pause_archive})", file=sys.stderr)
    print(f"[image] app image: {images.app_archive}", file=sys.stderr)
    print(images.app_ref)
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..core.durations import parse_duration
    from ..controller.handlers import run_operator
    from ..controller.settings import OperatorSettings

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
        # kopf's /healthz is served by aiohttp, which logs every request: in a pod that is a
        # line per kubelet probe, several a minute, burying what the operator does.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    defaults = OperatorSettings()
    settings = OperatorSettings(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespace),
        secret_propagation=parse_duration(args.secret_propagation) if args.secret_propagation else defaults.secret_propagation,
        metrics_port=args.metrics_port or None,
        metrics_host=args.metrics_host,
        health_port=args.health_port or None,
        health_host=args.health_host,
        peering=args.peering,
        redis_resync=parse_duration(args.redis_resync) if args.redis_resync else defaults.redis_resync,
        revocation_document_limit=args.revocation_document_limit or defaults.revocation_document_limit,
        name_conflict_recheck=parse_duration(args.name_conflict_recheck) if args.name_conflict_recheck else defaults.name_conflict_recheck,
        served_check_interval=parse_duration(args.served_check_interval) if args.served_check_interval else defaults.served_check_interval,
        served_check_idle_interval=(
            parse_duration(args.served_check_idle_interval) if args.served_check_idle_interval else defaults.served_check_idle_interval
        ),
        jwks_server_reload_time=parse_duration(args.jwks_server_reload_time) if args.jwks_server_reload_time else defaults.jwks_server_reload_time,
    )
    asyncio.run(run_operator(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signing-key-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, else ~/.kube/config)")
    run.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable; default: all)")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port, 0 to disable")
    run.add_argument("--metrics-host", default="0.0.0.0")
    run.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port, 0 to disable")
    run.add_argument("--health-host", default="0.0.0.0")
    run.add_argument("--peering", help="kopf peering name for several replicas (default: standalone)")
    run.add_argument("--secret-propagation", help="how long a mounted Secret takes to reach signers (default 2m)")
    run.add_argument("--redis-resync", help="how often Redis-backed policies check Redis still holds their entries (default 15s)")
    run.add_argument("--revocation-document-limit", type=int, help="largest revocation ConfigMap in bytes (default and maximum 1 MiB)")
    run.add_argument("--name-conflict-recheck", help="how often a policy held by a name conflict looks again (default 30s)")
    run.add_argument("--served-check-interval", help="how often spec.jwks.servedAt URLs are checked while something is pending (default 5s)")
    run.add_argument("--served-check-idle-interval", help="how often they are checked while all serve the published set (default 5m)")
    run.add_argument("--jwks-server-reload-time", help="how long a JWKS server may take to serve a ConfigMap change (default 2m)")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(handler=_run)

    from ..sidecar import cli as sidecar_cli

    serve = commands.add_parser("serve", help="serve the JWKS from the ConfigMap (the sidecar)")
    sidecar_cli.add_arguments(serve)
    serve.set_defaults(handler=sidecar_cli.run)

    from . import revoke_token

    revoke = commands.add_parser("revoke-token", help="verify a token against a policy's keys and create its TokenRevocation")
    revoke_token.add_arguments(revoke)
    revoke.set_defaults(handler=revoke_token.run)

    demo = commands.add_parser("demo", help="control plane, operator, sidecar, a policy and one rotation, narrated")
    demo.add_argument("--dir", default=".devcluster", help="the dev cluster's folder (default: .devcluster)")
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser("dev-cluster", help="a local kube-apiserver + etcd + kube-controller-manager on loopback, optionally with a node")
    dev.add_argument("action", choices=["up", "down", "status", "build", "image"],
                     help="build only builds the binaries and unpacks kubectl/helm (cached); image builds the "
                          "Dockerfile's image and the pause image (cached), loads them into the running node "
                          "of --dir, and prints the image's reference last")
    dev.add_argument("--node", action="store_true",
                     help="up/build: also a node (containerd, kubelet, kube-scheduler, kube-proxy; pods on a local bridge)")
    dev.add_argument("--dir", default=".devcluster", help="state, logs and kubeconfig (default: .devcluster)")
    dev.set_defaults(handler=_dev_cluster)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.dir))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)

