"""Refresh the Kubernetes definitions embedded in values.schema.json.

Values that are handed to Kubernetes verbatim (affinity, tolerations, securityContext, resources,
...) are checked against the same strict schemas `kubernetes-validate --strict` uses
(additionalProperties: false at every level), copied from the kubernetes-validate package for
the Kubernetes version below, without descriptions. Run after bumping either:

    .venv/bin/python charts/signing-key-operator/hack/update_schema_defs.py [--check]

Not packaged (.helmignore); tests/integration/test_chart.py runs it with --check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KUBERNETES_VERSION = "1.34.0"
PREFIX = "io.k8s."
ROOTS = [
    "io.k8s.api.core.v1.Affinity",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.PodSecurityContext",
    "io.k8s.api.core.v1.ResourceRequirements",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.Toleration",
    "io.k8s.api.core.v1.TopologySpreadConstraint",
]
SCHEMA = Path(__file__).resolve().parents[1] / "values.schema.json"


def kubernetes_definitions() -> dict:
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    source = json.loads((root / "_definitions.json").read_text())["$defs"]
    wanted: dict[str, dict] = {}

    def rewrite(node):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "description":
                    continue
                if key == "$ref":
                    name = value.rsplit("/", 1)[-1]
                    visit(name)
                    out[key] = f"#/definitions/{name}"
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    def visit(name: str) -> None:
        if name not in wanted:
            wanted[name] = {}
            wanted[name] = rewrite(source[name])

    for name in ROOTS:
        visit(name)
    return dict(sorted(wanted.items()))


def updated(schema: dict) -> dict:
    own = {k: v for k, v in schema.get("definitions", {}).items() if not k.startswith(PREFIX)}
    return {**schema, "definitions": {**own, **kubernetes_definitions()}}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    current = SCHEMA.read_text()
    wanted = render(updated(json.loads(current)))
    if "--check" in argv:
        if current != wanted:
            print(f"{SCHEMA} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
