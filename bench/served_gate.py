"""The served-JWKS gate through real rotations, with and without it. Prints figures; asserts nothing.

    .venv/bin/python bench/served_gate.py                          # lag 30 s, 10 rotations per arm
    .venv/bin/python bench/served_gate.py --lag 8 --rotations 3    # what the conformance test runs

Two arms at once (tests/conformance/gate.py): each a policy on the conformance suite's scaled
timeline (publishAhead 6 s, interval 8 s), its JWKS sidecar, an endpoint in front of it that
serves what the sidecar served --lag seconds ago (a CDN or a stale volume), a signer that sees
the signing Secret late as a mounting pod does, and the five conformance clients fetching from
that endpoint. The gated arm names the endpoint in spec.jwks.servedAt; the ungated arm does
not. Rotations alternate between the rotate annotation and the timer, as test_rotation.py makes
them, until each arm has had --rotations. Every token is verified fresh, half-way and at its
oldest acceptable age.

Prints, per client, failed verifications / verifications in each arm, then per arm the
seconds from publication to each stage (the sidecar, the lagging endpoint, the operator's
firstServed, activation), then the JSON. Starts its own dev control plane and operator (the
conformance operator's flags: --served-check-interval 0.2s --served-check-idle-interval 10s
--jwks-server-reload-time 2s) in a temporary folder and stops them. Needs the conformance
verifiers (tests/conformance/setup.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))
from tests.conformance.clients import cache_root, missing_builds  # noqa: E402
from tests.conformance.gate import OPERATOR_ARGS, format_table, run_arms  # noqa: E402
from tests.conformance.timeline import SECRET_PROPAGATION  # noqa: E402
from tests.integration.harness import OperatorProcess, Policies  # noqa: E402

from signing_key_operator.devcluster.cluster import DevCluster  # noqa: E402
from signing_key_operator.devcluster.crd import install_crds  # noqa: E402

NAMESPACE = "bench"


def progress(started: float):
    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {message}", file=sys.stderr, flush=True)
    return say


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lag", type=float, default=30, help="seconds the endpoint lags the sidecar (default 30)")
    parser.add_argument("--rotations", type=int, default=10, help="activations per arm (default 10)")
    parser.add_argument("--logs", type=Path, help="keep the operator's, sidecars' and verifiers' logs here")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    missing = missing_builds()
    if missing:
        print(f"the conformance verifiers are not built ({', '.join(missing)} missing under {cache_root()}): "
              "run tests/conformance/setup.sh first", file=sys.stderr)
        return 2
    say = progress(time.monotonic())
    with tempfile.TemporaryDirectory(prefix="sko-bench-") as tmp:
        folder = Path(tmp)
        cluster = DevCluster(folder / "cluster")
        cluster.up()
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        operator = None
        try:
            install_crds(api)
            client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
            operator = OperatorProcess(
                cluster.kubeconfig, folder / "operator.log",
                extra_args=["--namespace", NAMESPACE, "--secret-propagation", SECRET_PROPAGATION, *OPERATOR_ARGS],
            ).start().wait_serving()
            say(f"control plane and operator up; lag {args.lag:g} s, {args.rotations} rotations per arm")
            result = run_arms(Policies(api, NAMESPACE), cluster.kubeconfig, NAMESPACE, folder / "logs",
                              lag=args.lag, rotations=args.rotations, progress=say)
        finally:
            if operator is not None:
                operator.stop()
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                if (folder / "operator.log").exists():
                    shutil.copy(folder / "operator.log", args.logs / "operator.log")
                if (folder / "logs").exists():
                    shutil.copytree(folder / "logs", args.logs / "arms", dirs_exist_ok=True)
            api.close()
            cluster.down()
    print(format_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
