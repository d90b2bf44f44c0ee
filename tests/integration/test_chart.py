"""The Helm chart, as platform teams use it: real helm and kubectl binaries against the real
control plane, and the operator run with nothing but the chart's ServiceAccount identity.

Identity: the operator runs as `system:serviceaccount:<release ns>:<sa>` in the groups every
ServiceAccount has. The dev cluster issues that identity as a client certificate
(`dev_cluster.kubeconfig_for`), which RBAC and the chart's ValidatingAdmissionPolicy cannot tell
from the ServiceAccount's token: same user name, same groups. A second test runs the operator
with a real token from `kubectl create token` (see test_operator_runs_with_a_service_account_token).

Namespaces here start with `chart-`, never `t-`: the session operator handles `t-*`, and these
tests run operators of their own.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .harness import FAST_SPEC, REPO, OperatorProcess, Policies, free_port, wait_until

BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
CHART = REPO / "charts" / "signing-key-operator"
CRD_FILE = REPO / "crds" / "signingkeypolicies.yaml"
CRD_NAME = "signingkeypolicies.signingkeys.dev"
REVOCATION_CRD_NAME = "tokenrevocations.signingkeys.dev"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
KUBERNETES_VERSION = "1.34.0"
# Custom resources kubernetes-validate has no schema for: skipped, nothing else may be.
UNKNOWN_TO_KUBERNETES_VALIDATE = {"ServiceMonitor", "KopfPeering", "ClusterKopfPeering"}
# A refusal by RBAC (or by an authenticator that did not see the credentials) in an operator log.
# Words, not status numbers: the API server names every 401 and 403 (`Unauthorized`, `... is forbidden`),
# while a bare `401` also matches a log line's milliseconds or a resourceVersion.
REFUSAL = re.compile(r"forbidden|unauthorized|not enough permissions|system:anonymous", re.IGNORECASE)

CUSTOM_VALUES = {
    "replicaCount": 2,
    "namespaces": ["team-a", "team-b"],
    "image": {"repository": "registry.example.com/platform/signing-key-operator", "digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccount": {"annotations": {"iam.example.com/role": "signing-keys"}},
    "operator": {"secretPropagation": "2m", "servedCheckInterval": "10s", "servedCheckIdleInterval": "15m",
                 "jwksServerReloadTime": "30s", "verbose": True, "extraEnv": [{"name": "TZ", "value": "UTC"}]},
    "peering": {"enabled": True, "name": "signing-keys"},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"example.com/tier": "control"},
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "512Mi"}},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}},
    }]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}}],
    "metrics": {"service": {"port": 9090, "annotations": {"prometheus.io/scrape": "true"}},
                "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prometheus"}}},
    "jwksServer": {"enabled": True, "policy": "api-access-tokens", "namespace": "team-a",
                   "issuer": "https://auth.example.com", "maxAge": 60, "replicaCount": 3,
                   "service": {"type": "LoadBalancer", "port": 443}},
}
FILE_MODE_VALUES = {
    "crds": {"enabled": False},
    "admissionPolicy": {"enabled": False},
    "metrics": {"service": {"enabled": False}},
    "jwksServer": {"enabled": True, "policy": "spring-rs256", "mode": "file", "configMapName": "spring-jwks"},
}


# --- helpers -------------------------------------------------------------------------------------

def _run(*argv, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def helm(*args, kubeconfig: Path | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    assert HELM.exists(), f"helm not found at {HELM} (run `signing-key-operator dev-cluster build`)"
    extra = ["--kubeconfig", kubeconfig] if kubeconfig else []
    return _run(HELM, *args, *extra, check=check, timeout=timeout)


def kubectl(kubeconfig: Path, *args, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    assert KUBECTL.exists(), f"kubectl not found at {KUBECTL}"
    return _run(KUBECTL, "--kubeconfig", kubeconfig, *args, input=input, check=check)


def values_file(tmp_path: Path, values: dict, name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def render(*args) -> list[dict]:
    out = helm("template", "sko", CHART, "--namespace", "sko-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def service_account_identity(dev_cluster, namespace: str, name: str) -> Path:
    """A kubeconfig whose user and groups are exactly those of the ServiceAccount."""
    return dev_cluster.kubeconfig_for(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


def token_kubeconfig(admin: Path, namespace: str, service_account: str, path: Path) -> Path:
    """`kubectl create token` for the ServiceAccount, plus the server and CA of the admin kubeconfig."""
    token = kubectl(admin, "create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": cluster["server"],
                                                  "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": service_account, "namespace": namespace}}],
        "current-context": "dev",
    }))
    path.chmod(0o600)
    return path


def can_i(kubeconfig: Path, verb: str, resource: str, namespace: str | None = None) -> bool:
    scope = ["-n", namespace] if namespace else []
    result = kubectl(kubeconfig, "auth", "can-i", verb, resource, *scope, check=False)
    return result.stdout.strip() == "yes"


def refusals(log: str) -> list[str]:
    # A namespace being deleted refuses new objects with 403 too: that is no RBAC verdict (only
    # leftovers of other test modules' namespaces can be in that state here).
    return [line for line in log.splitlines() if REFUSAL.search(line) and "being terminated" not in line]


def operator_args(manifest: list[dict], deployment: str) -> list[str]:
    """The operator's arguments as the chart renders them, minus the ports the test process picks."""
    (deploy,) = find(manifest, "Deployment", deployment)
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    return [a for a in args[1:] if not a.startswith(("--metrics-port", "--health-port"))]


def policy_yaml(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
                           "metadata": {"name": name}, "spec": spec})


def create_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def delete_namespace(core: client.CoreV1Api, name: str) -> None:
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


def crd_established(api_client) -> bool:
    try:
        crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def objects_exist(kubeconfig: Path, manifest_text: str) -> list[str]:
    """`kubectl get -f` on the release manifest: every object, or the error naming the missing one."""
    result = kubectl(kubeconfig, "get", "-f", "-", "-o", "name", input=manifest_text, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


# --- the chart, rendered -------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, CUSTOM_VALUES, FILE_MODE_VALUES], ids=["default", "custom", "file-mode"])
def test_helm_lint_strict(values, tmp_path):
    args = ["-f", values_file(tmp_path, values)] if values else []
    result = helm("lint", "--strict", CHART, *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES, FILE_MODE_VALUES], ids=["default", "custom", "file-mode"])
def test_rendered_manifests_pass_kubernetes_validate_strict(values, tmp_path):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test dependency: pip install -e '.[test]'")
    args = ["-f", values_file(tmp_path, values)] if values else []
    rendered = helm("template", "sko", CHART, "--namespace", "sko-system", *args).stdout
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(rendered)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    result = _run(BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, manifest, check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and not [l for l in lines if l.startswith(("ERROR", "FATAL"))], result.stdout
    skipped = [l for l in lines if l.startswith("WARN")]
    for line in skipped:
        assert re.search(r"kind (\w+) ", line).group(1) in UNKNOWN_TO_KUBERNETES_VALIDATE, line
    passed = [l for l in lines if l.startswith("INFO") and " passed " in l]
    assert len(passed) + len(skipped) == len(docs), result.stdout


@pytest.mark.parametrize("values, message", [
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"operator": {"namespace": "x"}}, "additional properties 'namespace' not allowed"),
    ({"jwksServer": {"enabled": True, "polcy": "api"}}, "additional properties 'polcy' not allowed"),
    ({"securityContext": {"readOnlyRootFilesystem": True, "runAsNonRot": True}}, "additional properties 'runAsNonRot' not allowed"),
    ({"tolerations": [{"key": "a", "efect": "NoSchedule"}]}, "additional properties 'efect' not allowed"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"namespaces": ["Team_A"]}, "/namespaces/0"),
    ({"operator": {"secretPropagation": "1d"}}, "/operator/secretPropagation"),
    ({"jwksServer": {"enabled": True}}, "/jwksServer/policy"),
    ({"jwksServer": {"mode": "poll"}}, "/jwksServer/mode"),
], ids=["top-level", "nested", "jwks-typo", "k8s-security-context", "k8s-toleration", "type", "namespace-name",
        "go-duration", "jwks-needs-policy", "enum"])
def test_schema_refuses_unknown_keys_and_bad_values(values, message, tmp_path):
    result = helm("template", "sko", CHART, "-f", values_file(tmp_path, values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def _object_schemas(node, path="#"):
    if isinstance(node, dict):
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            yield path, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_schemas(value, f"{path}/{index}")


def test_values_schema_refuses_unknown_keys_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _object_schemas(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        else:  # a map (labels, annotations, resource quantities): keys are the user's, values typed
            assert isinstance(node.get("additionalProperties"), dict), f"{path} is an untyped object"
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test dependency")
    _run(sys.executable, CHART / "hack" / "update_schema_defs.py", "--check")


def test_every_value_is_commented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    uncommented = []
    for index, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z][\w.-]*:", line):
            above = lines[index - 1].strip() if index else ""
            if not above.startswith("#"):
                uncommented.append(line)
    assert not uncommented, "keys without a comment right above them:\n" + "\n".join(uncommented)
    # ...and every key of the schema has a value (and so a comment) in values.yaml.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(properties, values, path):
        for key, sub in properties.items():
            assert key in values, f"{path}{key} is in the schema but not in values.yaml"
            if "properties" in sub and isinstance(values[key], dict):
                walk(sub["properties"], values[key], f"{path}{key}.")
    walk(schema["properties"], values, "")


def test_the_chart_ships_the_repository_crds(tmp_path):
    # Rendered: each file as written, plus the keep annotation and the release labels.
    rendered = {crd["metadata"]["name"]: crd for crd in find(render(), "CustomResourceDefinition")}
    files = sorted(CRD_FILE.parent.glob("*.yaml"))
    assert len(files) == 2 and sorted(rendered) == sorted(yaml.safe_load(f.read_text())["metadata"]["name"] for f in files)
    for path in files:
        expected = yaml.safe_load(path.read_text())
        crd = rendered[expected["metadata"]["name"]]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        for key in expected["metadata"]["labels"]:
            assert crd["metadata"]["labels"][key] == expected["metadata"]["labels"][key]
        crd["metadata"] = {k: v for k, v in crd["metadata"].items() if k not in ("annotations", "labels")}
        expected["metadata"].pop("labels")
        assert crd == expected
    assert "helm.sh/resource-policy" not in json.dumps(find(render("--set", "crds.keep=false"), "CustomResourceDefinition"))
    assert not find(render("--set", "crds.enabled=false"), "CustomResourceDefinition")
    # Packaged: `helm package` follows the files/crds symlink and stores the same bytes.
    helm("package", CHART, "--destination", tmp_path)
    (package,) = tmp_path.glob("signing-key-operator-*.tgz")
    with tarfile.open(package) as archive:
        names = archive.getnames()
        for path in files:
            assert archive.extractfile(f"signing-key-operator/files/crds/{path.name}").read() == path.read_bytes()
    assert not [n for n in names if "/hack/" in n]


def test_defaults_are_restricted_single_replica_cluster_wide_and_without_peering():
    objects = render()
    (deploy,) = find(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deploy["spec"]["replicas"] == 1
    assert container["args"] == ["run", "--metrics-port=8080", "--health-port=8081"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "healthz": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert not find(objects, "ServiceMonitor") and not find(objects, "ClusterKopfPeering")
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    (role,) = find(objects, "ClusterRole")
    assert all("resourceNames" not in rule for rule in role["rules"])
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("signingkeys.dev", "signingkeypolicies"): {"get", "list", "watch", "patch"},
        ("signingkeys.dev", "signingkeypolicies/status"): {"patch"},
        ("signingkeys.dev", "tokenrevocations"): {"list", "watch"},
        ("signingkeys.dev", "tokenrevocations/status"): {"patch"},
        ("", "secrets"): {"get", "list", "watch", "create", "update", "delete"},
        ("", "configmaps"): {"get", "list", "watch", "create", "update", "delete"},
        ("", "events"): {"create"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    }
    assert find(objects, "ValidatingAdmissionPolicy") and find(objects, "ValidatingAdmissionPolicyBinding")


def test_key_material_is_guarded_by_default_and_only_where_the_release_works(tmp_path):
    guard = "sko-signing-key-operator-key-material.sko-system"
    (policy,) = find(render(), "ValidatingAdmissionPolicy", guard)
    (condition,) = [c for c in policy["spec"]["matchConditions"] if c["name"] == "not-the-operator"]
    assert condition["expression"] == "request.userInfo.username != 'system:serviceaccount:sko-system:sko-signing-key-operator'"
    (binding,) = find(render(), "ValidatingAdmissionPolicyBinding", guard)
    assert "matchResources" not in binding["spec"]  # cluster-wide, as the operator is
    (scoped,) = find(render("-f", values_file(tmp_path, {"namespaces": ["auth", "billing"]})), "ValidatingAdmissionPolicyBinding", guard)
    assert scoped["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["auth", "billing"]}]
    off = render("-f", values_file(tmp_path, {"admissionPolicy": {"guardKeyMaterial": False}}, "off.yaml"))
    assert not find(off, "ValidatingAdmissionPolicy", guard) and find(off, "ValidatingAdmissionPolicy")


def test_operator_settings_become_its_flags(tmp_path):
    objects = render("-f", values_file(tmp_path, {"operator": CUSTOM_VALUES["operator"]}))
    (deploy,) = find(objects, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--secret-propagation=2m", "--served-check-interval=10s", "--served-check-idle-interval=15m",
                 "--jwks-server-reload-time=30s", "--verbose"):
        assert flag in args, args


def test_a_namespace_list_grants_roles_in_those_namespaces_only():
    objects = render("--set-json", 'namespaces=["team-a","team-b"]', "--set", "peering.enabled=true")
    (deploy,) = find(objects, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--peering=signing-key-operator" in args
    assert sorted(r["metadata"]["namespace"] for r in find(objects, "Role")) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in find(objects, "RoleBinding")) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in find(objects, "KopfPeering")) == ["team-a", "team-b"]
    # At cluster scope only names of namespaces and CRDs: nothing that holds data.
    (discovery,) = find(objects, "ClusterRole")
    assert {r for rule in discovery["rules"] for r in rule["resources"]} == {"namespaces", "customresourcedefinitions"}
    assert all(set(rule["verbs"]) == {"list", "watch"} for rule in discovery["rules"])


def test_jwks_server_watch_mode_reads_one_configmap_and_file_mode_no_api_at_all():
    watch = render("--set", "jwksServer.enabled=true", "--set", "jwksServer.policy=api", "--set", "jwksServer.namespace=apps")
    (role,) = find(watch, "Role", namespace="apps")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["api-jwks", "api-revocations"],
                              "verbs": ["get", "list", "watch"]}]
    (server,) = find(watch, "Deployment", "sko-signing-key-operator-jwks", "apps")
    pod = server["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][:3] == ["serve", "--configmap=apps/api-jwks", "--revocations-configmap=apps/api-revocations"]
    assert pod["serviceAccountName"] == "sko-signing-key-operator-jwks"
    file_mode = render("--set", "jwksServer.enabled=true", "--set", "jwksServer.policy=api", "--set", "jwksServer.mode=file")
    (server,) = find(file_mode, "Deployment", "sko-signing-key-operator-jwks")
    pod = server["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert "--jwks-file=/etc/jwks" in pod["containers"][0]["args"]
    assert {"name": "jwks", "configMap": {"name": "api-jwks", "optional": True}} in pod["volumes"]
    assert "--revocations-file=/etc/revocations" in pod["containers"][0]["args"]
    assert {"name": "revocations", "configMap": {"name": "api-revocations", "optional": True}} in pod["volumes"]
    assert not find(file_mode, "Role")
    without = render("--set", "jwksServer.enabled=true", "--set", "jwksServer.policy=api", "--set", "jwksServer.revocations.enabled=false")
    (role,) = find(without, "Role")
    assert role["rules"][0]["resourceNames"] == ["api-jwks"]
    (server,) = find(without, "Deployment", "sko-signing-key-operator-jwks")
    assert not [a for a in server["spec"]["template"]["spec"]["containers"][0]["args"] if "revocations" in a]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_valid_policies_without_timeline_warnings(path):
    from signing_key_operator.core.spec import PolicySpec, timeline_warnings

    body = yaml.safe_load(path.read_text())
    assert body["kind"] == "SigningKeyPolicy"
    spec = PolicySpec.from_resource(body["metadata"]["name"], body["spec"])
    assert [str(w) for w in timeline_warnings(spec)] == []


def test_examples_cover_an_api_a_short_lived_service_token_and_spring():
    specs = {p.stem: yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES}
    assert specs["api-access-tokens"]["algorithm"] == "ES256"
    assert specs["service-token-eddsa"]["algorithm"] == "EdDSA"
    assert specs["service-token-eddsa"]["tokenLifetime"] == "5m"
    assert specs["spring-rs256"]["algorithm"] == "RS256"


# --- installed on the real control plane ---------------------------------------------------------

def _suffix() -> str:
    return uuid.uuid4().hex[:6]


# Class-scoped: each class's operator process stops before the next class runs its own.

@pytest.fixture(scope="class")
def release(dev_cluster, kubeconfig, api_client, tmp_path_factory):
    """The default install (cluster-wide RBAC) plus the JWKS server in watch mode for policy `api`."""
    core = client.CoreV1Api(api_client)
    namespace = create_namespace(core, f"chart-{_suffix()}")
    name = "keys"
    values = {"jwksServer": {"enabled": True, "policy": "api"}}
    path = values_file(tmp_path_factory.mktemp("chart"), values)
    # --take-ownership: the session's CRD fixture may have created the CRD already; this is also
    # how a cluster moves from `kubectl apply -f crds/` to the chart.
    helm("install", name, CHART, "--namespace", namespace, "-f", path, "--take-ownership", kubeconfig=kubeconfig)
    info = {
        "name": name, "namespace": namespace, "values": values,
        "fullname": f"{name}-signing-key-operator",
        "manifest": lambda: helm("get", "manifest", name, "--namespace", namespace, kubeconfig=kubeconfig).stdout,
    }
    yield info
    helm("uninstall", name, "--namespace", namespace, kubeconfig=kubeconfig, check=False)
    delete_namespace(core, namespace)


@pytest.fixture(scope="class")
def identity(dev_cluster, release) -> Path:
    return service_account_identity(dev_cluster, release["namespace"], release["fullname"])


@pytest.fixture(scope="class")
def chart_operator(release, identity, api_client, kubeconfig, tmp_path_factory):
    """The operator with the chart's identity and the chart's arguments (cluster-wide: none),
    started with a policy on a second-scale timer that a later test checks."""
    manifest = [d for d in yaml.safe_load_all(release["manifest"]()) if d]
    args = operator_args(manifest, release["fullname"])
    assert args == []
    wait_until(lambda: crd_established(api_client), 30, "the CRD to be Established")
    process = OperatorProcess(identity, tmp_path_factory.mktemp("operator") / "operator.log", extra_args=args).start()
    # Established can come a moment before the new resource is served: retry the first create.
    wait_until(lambda: kubectl(kubeconfig, "apply", "-n", release["namespace"], "-f", "-", check=False,
                               input=policy_yaml("rotating", FAST_SPEC)).returncode == 0, 15, "the policy to be created")
    process.rotating_since = time.monotonic()
    yield process
    process.stop()


@pytest.fixture(scope="class")
def release_policies(api_client, release) -> Policies:
    return Policies(api_client, release["namespace"])


class TestClusterWideRelease:
    """The default install: one release, cluster-wide RBAC, the JWKS server in watch mode."""

    def test_install_established_the_crd_and_created_every_object(self, release, kubeconfig, api_client):
        wait_until(lambda: crd_established(api_client), 30, "the CRD to be Established")
        manifest_text = release["manifest"]()
        manifest = [d for d in yaml.safe_load_all(manifest_text) if d]
        names = objects_exist(kubeconfig, manifest_text)
        assert len(names) == len(manifest)
        kinds = {d["kind"] for d in manifest}
        assert kinds == {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                         "Deployment", "Service", "Role", "RoleBinding",
                         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
        status = json.loads(helm("status", release["name"], "-n", release["namespace"], "-o", "json", kubeconfig=kubeconfig).stdout)
        assert status["info"]["status"] == "deployed"
        assert "kubectl annotate" in status["info"]["notes"] and "signingkeys.dev/rotate" in status["info"]["notes"]

    def test_examples_are_accepted_by_the_installed_crd(self, release, kubeconfig):
        result = kubectl(kubeconfig, "apply", "--dry-run=server", "-n", release["namespace"], *[a for p in EXAMPLES for a in ("-f", p)])
        assert result.stdout.count("created (server dry run)") == len(EXAMPLES)

    def test_kubectl_experience(self, release, chart_operator, kubeconfig, release_policies):
        ns = release["namespace"]
        kubectl(kubeconfig, "apply", "-n", ns, "-f", "-",
                input=policy_yaml("api", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}}))
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "skp/api", "--timeout=30s")

        listed = kubectl(kubeconfig, "get", "skp", "-n", ns).stdout.splitlines()
        assert re.split(r"\s{2,}", listed[0].strip()) == ["NAME", "ALGORITHM", "ACTIVE KID", "NEXT ROTATION", "READY", "SERVED", "AGE"]
        first = release_policies.get("api")["status"]["activeKid"]
        row = next(line for line in listed if line.startswith("api "))
        assert "ES256" in row and first in row and "True" in row

        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        kubectl(kubeconfig, "annotate", "-n", ns, "skp/api", f"signingkeys.dev/rotate={stamp}", "--overwrite")
        following = wait_until(lambda: release_policies.get("api")["status"].get("nextKid"), 10, "a next key")
        assert following in release_policies.jwks_kids("api-jwks")
        wait_until(lambda: release_policies.get("api")["status"]["activeKid"] == following, 15, "the next key to sign")

        kubectl(kubeconfig, "annotate", "-n", ns, "skp/api", f"signingkeys.dev/revoke-kid={following}", "--overwrite")
        wait_until(lambda: following not in release_policies.jwks_kids("api-jwks"), 10, "the revoked kid to leave the JWKS")
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "skp/api", "--timeout=15s")

        described = kubectl(kubeconfig, "describe", "-n", ns, "skp/api").stdout
        events = described[described.index("Events:"):]
        for reason in ("KeyActivated", "KeyPublished", "KeyRetired", "KeyRevoked", "SigningSecretUpdated"):
            assert reason in events, described

    def test_jwks_server_identity_serves_the_policy_and_reads_nothing_else(self, release, chart_operator, kubeconfig, release_policies, tmp_path):
        ns, jwks = release["namespace"], f"{release['fullname']}-jwks"
        release_policies.wait_ready("api")
        token = token_kubeconfig(kubeconfig, ns, jwks, tmp_path / "jwks.kubeconfig")
        assert can_i(token, "get", "configmaps/api-jwks", ns)
        assert not can_i(token, "get", "configmaps", ns)
        assert not can_i(token, "list", "configmaps", ns)
        assert not can_i(token, "get", "configmaps/rotating-jwks", ns)
        assert not can_i(token, "get", "secrets", ns)

        manifest = [d for d in yaml.safe_load_all(release["manifest"]()) if d]
        (server,) = find(manifest, "Deployment", jwks)
        args = server["spec"]["template"]["spec"]["containers"][0]["args"]
        port = free_port()
        log = tmp_path / "jwks.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "signing_key_operator", *args, "--kubeconfig", str(token),
                 "--host", "127.0.0.1", f"--port={port}"], stdout=out, stderr=subprocess.STDOUT)
        try:
            def served():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=2) as reply:
                        return json.loads(reply.read())
                except OSError:
                    return None
            body = wait_until(served, 15, "the JWKS server to serve")
            assert sorted(k["kid"] for k in body["keys"]) == sorted(release_policies.jwks_kids("api-jwks"))
        finally:
            process.terminate()
            process.wait(15)
        assert not refusals(log.read_text())

    def test_upgrade_keeps_policies_and_their_keys(self, release, chart_operator, kubeconfig, api_client, release_policies, tmp_path):
        ns = release["namespace"]
        # A policy created between install and upgrade, on a timeline nothing changes during the test.
        kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", input=policy_yaml("kept", {"algorithm": "RS256", "rsaKeySize": 2048}))
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "skp/kept", "--timeout=30s")

        def state():
            core = client.CoreV1Api(api_client)
            return {
                "policy": release_policies.get("kept")["metadata"]["uid"],
                "keys": sorted((s.metadata.name, s.metadata.uid) for s in release_policies.key_secrets("kept")),
                "signing": core.read_namespaced_secret("kept-signing", ns).metadata.uid,
                "jwks": release_policies.jwks_kids("kept-jwks"),
                "active": release_policies.get("kept")["status"]["activeKid"],
            }

        before = state()
        values = {**release["values"], "replicaCount": 2,
                  "jwksServer": {"enabled": True, "policy": "api", "mode": "file"},
                  "metrics": {"service": {"port": 9090}}, "operator": {"secretPropagation": "2s"}}
        helm("upgrade", release["name"], CHART, "-n", ns, "-f", values_file(tmp_path, values), kubeconfig=kubeconfig)

        status = json.loads(helm("status", release["name"], "-n", ns, "-o", "json", kubeconfig=kubeconfig).stdout)
        assert status["version"] == 2 and status["info"]["status"] == "deployed"
        assert crd_established(api_client)
        manifest_text = release["manifest"]()
        assert len(objects_exist(kubeconfig, manifest_text)) == len([d for d in yaml.safe_load_all(manifest_text) if d])
        operator_deploy = client.AppsV1Api(api_client).read_namespaced_deployment(release["fullname"], ns)
        assert operator_deploy.spec.replicas == 2
        assert "--secret-propagation=2s" in operator_deploy.spec.template.spec.containers[0].args
        # The JWKS server moved to file mode: its ServiceAccount and Role went with the upgrade.
        with pytest.raises(ApiException) as gone:
            client.RbacAuthorizationV1Api(api_client).read_namespaced_role(f"{release['fullname']}-jwks", ns)
        assert gone.value.status == 404

        time.sleep(1)  # let the operator see the upgrade's CRD write, if any
        assert state() == before
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "skp/kept", "skp/api", "skp/rotating", "--timeout=15s")
        assert chart_operator.process.poll() is None

    def test_the_chart_identity_ran_a_full_timer_rotation_without_a_refusal(self, release, chart_operator, release_policies):
        # FAST_SPEC: a key signs 12 s, the next is published 4 s ahead, and a retired key stays
        # 5 s + 1 s + 2 s. Within about 20 s of creation: published, activated, retired, removed.
        def rotated_and_removed():
            keys = release_policies.get("rotating").get("status", {}).get("keys", [])
            reasons = release_policies.event_reasons("rotating")
            return "KeyRemoved" in reasons and any(k["state"] == "active" and k.get("reason") == "timer" for k in keys)

        remaining = 45 - (time.monotonic() - chart_operator.rotating_since)
        wait_until(rotated_and_removed, max(remaining, 5), "a timer rotation with the old key removed")
        reasons = release_policies.event_reasons("rotating")
        for reason in ("KeyPublished", "KeyActivated", "KeyRetired", "KeyRemoved", "SigningSecretUpdated"):
            assert reason in reasons
        assert chart_operator.process.poll() is None
        problems = refusals(chart_operator.logs())
        assert not problems, "\n".join(problems)

    def test_the_chart_identity_cannot_write_what_it_does_not_own(self, release, identity, kubeconfig, api_client):
        ns = release["namespace"]
        core = client.CoreV1Api(api_client)
        core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="unrelated"), string_data={"password": "hunter2"}))
        # Cluster-wide, reading is inherent: kopf lists and watches Secrets in every namespace and
        # RBAC cannot filter by label. What it cannot do is change or delete what it did not make.
        assert can_i(identity, "get", "secrets", "kube-system")
        replaced = kubectl(identity, "-n", ns, "label", "secret/unrelated", "signingkeys.dev/policy=stolen", check=False)
        assert replaced.returncode != 0 and "forbidden" in replaced.stderr.lower()
        body = core.read_namespaced_secret("unrelated", ns).to_dict()
        update = kubectl(identity, "-n", ns, "replace", "-f", "-", check=False,
                         input=json.dumps({"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": "unrelated", "namespace": ns,
                                                        "resourceVersion": body["metadata"]["resource_version"],
                                                        "labels": {"signingkeys.dev/policy": "stolen"}},
                                           "stringData": {"password": "x"}}))
        assert update.returncode != 0 and "does not own secrets" in update.stderr, update.stderr
        deleted = kubectl(identity, "-n", ns, "delete", "secret/unrelated", check=False)
        assert deleted.returncode != 0 and "does not own secrets" in deleted.stderr, deleted.stderr
        created = kubectl(identity, "-n", ns, "create", "configmap", "planted", "--from-literal=a=b", check=False)
        assert created.returncode != 0 and "may only write configmaps labelled" in created.stderr, created.stderr
        assert base64.b64decode(core.read_namespaced_secret("unrelated", ns).data["password"]) == b"hunter2"
        for verb, resource, scope in [
            ("create", "pods", ns), ("create", "pods/exec", ns), ("create", "serviceaccounts/token", ns),
            ("create", "rolebindings", ns), ("create", "clusterrolebindings", None), ("patch", "secrets", ns),
            ("update", "customresourcedefinitions", None), ("delete", "customresourcedefinitions", None),
            ("create", "signingkeypolicies", ns), ("delete", "signingkeypolicies", ns), ("update", "signingkeypolicies", ns),
            ("list", "nodes", None), ("list", "namespaces", None), ("deletecollection", "secrets", ns),
        ]:
            assert not can_i(identity, verb, resource, scope), f"{verb} {resource} should be refused"

    def test_nobody_but_the_operator_writes_key_material(self, release, chart_operator, kubeconfig, api_client, release_policies):
        """admissionPolicy.guardKeyMaterial: a cluster admin (kubeconfig) is refused, as anyone
        with Secret rights in the namespace would be, while the operator's identity, which made
        these Secrets through the whole class, is not."""
        ns = release["namespace"]
        wait_until(lambda: release_policies.key_secrets("rotating") or None, 30, "the chart operator's key Secrets")
        key_secret = release_policies.key_secrets("rotating")[0].metadata.name
        attempts = {
            "change a key Secret": ("-n", ns, "label", f"secret/{key_secret}", "tampered=yes"),
            "delete the signing Secret": ("-n", ns, "delete", "secret/rotating-signing"),
            "strip the label": ("-n", ns, "label", f"secret/{key_secret}", "signingkeys.dev/component-"),
        }
        for what, args in attempts.items():
            result = kubectl(kubeconfig, *args, check=False)
            assert result.returncode != 0, what
            assert "holds signing-key-operator key material (signingkeys.dev/component=" in result.stderr, (what, result.stderr)
        forged = {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "rotating-key-999", "namespace": ns,
            "labels": {"signingkeys.dev/policy": "rotating", "signingkeys.dev/component": "verification"}}}
        created = kubectl(kubeconfig, "create", "-f", "-", input=json.dumps(forged), check=False)
        assert created.returncode != 0 and "only the operator writes it" in created.stderr, created.stderr
        # Everything else is untouched: an unlabelled Secret is anyone's to write.
        assert kubectl(kubeconfig, "-n", ns, "create", "secret", "generic", "anyones", "--from-literal=a=b").returncode == 0
        assert chart_operator.process.poll() is None and not refusals(chart_operator.logs())

    def test_uninstall_removes_the_release_and_keeps_the_crd_policies_and_keys(self, release, chart_operator, kubeconfig, api_client, release_policies):
        ns = release["namespace"]
        chart_operator.stop()  # its ServiceAccount goes with the release
        manifest_text = release["manifest"]()
        keys_before = {s.metadata.name for s in release_policies.key_secrets("kept")}
        result = helm("uninstall", release["name"], "-n", ns, kubeconfig=kubeconfig)
        assert "kept due to the resource policy" in result.stdout and CRD_NAME in result.stdout
        remaining = kubectl(kubeconfig, "get", "-f", "-", "-o", "name", "--ignore-not-found", input=manifest_text).stdout.split()
        assert sorted(remaining) == [f"customresourcedefinition.apiextensions.k8s.io/{name}" for name in (CRD_NAME, REVOCATION_CRD_NAME)]
        assert crd_established(api_client)
        assert release_policies.get("kept")["status"]["activeKid"]
        assert {s.metadata.name for s in release_policies.key_secrets("kept")} == keys_before
        assert helm("list", "-n", ns, "-q", kubeconfig=kubeconfig).stdout.strip() == ""


@pytest.fixture(scope="class")
def scoped(dev_cluster, kubeconfig, api_client, signingkeypolicy_crd, tmp_path_factory):
    """A release watching `<base>-w` only, with the CRD left to the cluster-wide release (or the
    session fixture): its home namespace and `<base>-o` are outside its reach."""
    core = client.CoreV1Api(api_client)
    base = f"chart-{_suffix()}"
    home, watched, outside = (create_namespace(core, n) for n in (base, f"{base}-w", f"{base}-o"))
    name = "scoped"
    values = {"namespaces": [watched], "crds": {"enabled": False}}
    helm("install", name, CHART, "--namespace", home, "-f", values_file(tmp_path_factory.mktemp("chart"), values),
         kubeconfig=kubeconfig)
    fullname = f"{name}-signing-key-operator"
    manifest = [d for d in yaml.safe_load_all(helm("get", "manifest", name, "-n", home, kubeconfig=kubeconfig).stdout) if d]
    yield {
        "home": home, "watched": watched, "outside": outside, "fullname": fullname,
        "identity": service_account_identity(dev_cluster, home, fullname),
        "args": operator_args(manifest, fullname),
    }
    helm("uninstall", name, "--namespace", home, kubeconfig=kubeconfig, check=False)
    for namespace in (home, watched, outside):
        delete_namespace(core, namespace)


class TestNamespacedRelease:
    """A release that watches one namespace: Roles there, nothing that holds data elsewhere."""

    def test_the_chart_identity_runs_a_full_rotation_in_its_namespace(self, scoped, api_client, kubeconfig, tmp_path):
        assert scoped["args"] == [f"--namespace={scoped['watched']}"]
        process = OperatorProcess(scoped["identity"], tmp_path / "operator.log", extra_args=scoped["args"]).start()
        try:
            policies = Policies(api_client, scoped["watched"])
            spec = {**FAST_SPEC, "algorithm": "EdDSA", "rotation": {"interval": "1h", "publishAhead": "4s"}}
            kubectl(kubeconfig, "apply", "-n", scoped["watched"], "-f", "-", input=policy_yaml("scoped", spec))
            first = policies.wait_ready("scoped")["status"]["activeKid"]
            kubectl(kubeconfig, "annotate", "-n", scoped["watched"], "skp/scoped", "signingkeys.dev/rotate=now-1", "--overwrite")
            # published now, signing after 4 s, the old key removed 5 + 1 + 2 s later
            wait_until(lambda: first not in policies.jwks_kids("scoped-jwks"), 25, "the old key to be removed")
            # The status is the reconcile's last write, a moment after the ConfigMap.
            status = wait_until(lambda: (lambda st: st if [k["state"] for k in st["keys"]] == ["active"] else None)(
                policies.get("scoped")["status"]), 15, "the status to show only the new key")
            assert status["activeKid"] != first
            assert process.process.poll() is None
        finally:
            process.stop()
        problems = refusals(process.logs())
        assert not problems, "\n".join(problems)

    def test_the_chart_identity_cannot_touch_other_namespaces(self, scoped, api_client):
        identity, watched, outside, home = scoped["identity"], scoped["watched"], scoped["outside"], scoped["home"]
        core = client.CoreV1Api(api_client)
        for namespace in (watched, outside):
            core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="unrelated"), string_data={"password": "hunter2"}))
        assert can_i(identity, "get", "secrets", watched)
        for namespace in (outside, home, "kube-system"):
            for verb, resource in (("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
                                   ("get", "configmaps"), ("list", "signingkeypolicies"), ("create", "events")):
                assert not can_i(identity, verb, resource, namespace), f"{verb} {resource} in {namespace}"
        assert not can_i(identity, "list", "secrets")  # at cluster scope
        got = kubectl(identity, "get", "secret/unrelated", "-n", outside, check=False)
        assert got.returncode != 0 and "Forbidden" in got.stderr and "cannot get resource \"secrets\"" in got.stderr
        listed = kubectl(identity, "get", "secrets", "--all-namespaces", check=False)
        assert listed.returncode != 0 and "Forbidden" in listed.stderr
        # Inside its namespace it reads what RBAC allows, but changes only what it owns.
        deleted = kubectl(identity, "delete", "secret/unrelated", "-n", watched, check=False)
        assert deleted.returncode != 0 and "does not own secrets" in deleted.stderr, deleted.stderr

    def test_operator_runs_with_a_service_account_token(self, scoped, api_client, kubeconfig, tmp_path):
        token = token_kubeconfig(kubeconfig, scoped["home"], scoped["fullname"], tmp_path / "token.kubeconfig")
        process = OperatorProcess(token, tmp_path / "operator.log", extra_args=scoped["args"]).start()
        try:
            policies = Policies(api_client, scoped["watched"])
            kubectl(kubeconfig, "apply", "-n", scoped["watched"], "-f", "-", input=policy_yaml("tokened", {}))
            wait_until(lambda: policies.condition("tokened") == "True" or refusals(process.logs()), 20,
                       "the policy to become Ready, or a refusal")
        finally:
            process.stop()
        problems = refusals(process.logs())
        assert not problems, "\n".join(problems[:3])
        assert policies.condition("tokened") == "True"
