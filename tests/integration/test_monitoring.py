"""The chart's alerts and dashboard, checked the way Prometheus and Grafana will read them.

- The PrometheusRule is rendered by the real helm and its rules run through `promtool test rules`
  (tests/integration/monitoring/alerts_test.yaml: each alert firing, and a case beside it that
  must not fire).
- Every alert links to its section of docs/runbooks.md, and every section is an alert's.
- Every metric an alert or a panel reads is one the operator exports, with samples, after a
  real run against the API server: policies that rotate, are revoked, serve their set at a
  servedAt URL, hold a TokenRevocation, and one an admission policy keeps from reconciling.
- A real Prometheus scraping that operator as the ServiceMonitor would, with the chart's rules
  loaded: every panel's query returns series, and the alerts for the policy that cannot
  reconcile are pending.

promtool and prometheus come from Debian's prometheus package (`make test` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from .harness import FAST_SPEC, REPO, Policies, Revocations, free_port, wait_until
from .test_chart import CHART, helm, render

RUNBOOK_URL = "https://docs.example.test/runbooks.md"
RULE_TESTS = Path(__file__).parent / "monitoring" / "alerts_test.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
DASHBOARD = CHART / "files" / "dashboards" / "signing-key-operator.json"
METRIC = re.compile(r"\bsigning_key_operator_[a-z_]+\b")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$policy": ".*"}
"""What Grafana substitutes before it sends a query; promtool needs plain PromQL."""


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: `make test` installs Debian's prometheus package (scripts/apt-install.sh prometheus)"
    return path


def _rules() -> list[dict]:
    rendered = render("--set", "metrics.prometheusRule.enabled=true", "--set", f"metrics.prometheusRule.runbookURL={RUNBOOK_URL}")
    (rule,) = [doc for doc in rendered if doc["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def _alerts() -> list[dict]:
    return [rule for group in _rules() for rule in group["rules"] if "alert" in rule]


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return panels + variables


def _plain_promql(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    label_values = re.fullmatch(r"label_values\((.*), *(\w+)\)", expression)
    return f"group by ({label_values[2]}) ({label_values[1]})" if label_values else expression


def _promtool_run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120)
    print(f"$ promtool {' '.join(map(str, args))}\n{result.stdout}{result.stderr}")
    return result


def test_promtool_runs_the_alert_unit_tests_on_the_rendered_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rules()}))
    checked = _promtool_run("check", "rules", str(rules))
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    tested_alerts = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert tested_alerts == {alert["alert"] for alert in _alerts()}, "every alert has a promtool test"
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool_run("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_a_broken_rule_fails_the_unit_tests(tmp_path):
    """The promtool tests can fail: with one threshold moved, they do."""
    groups = _rules()
    for rule in groups[0]["rules"]:
        if rule.get("alert") == "SigningKeyRevocationsUnpublished":
            rule["for"] = "10m"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {**yaml.safe_load(RULE_TESTS.read_text()), "rule_files": [str(tmp_path / "rules.yaml")]}
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool_run("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0 and "SigningKeyRevocationsUnpublished" in result.stdout + result.stderr


def test_every_alert_links_to_its_runbook_section_and_every_section_is_an_alert():
    headings = re.findall(r"^## (\S+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    alerts = _alerts()
    assert [a["alert"] for a in alerts] == headings, "docs/runbooks.md has one section per alert, in the rule's order"
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#{alert['alert'].lower()}"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_alerts_and_the_dashboard_are_off_by_default_and_alerts_need_a_runbook_url():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in render()}
    assert not any(kind == "PrometheusRule" for kind, _ in kinds)
    assert ("ConfigMap", "sko-signing-key-operator-dashboard") not in kinds
    refused = helm("template", "sko", CHART, "--set", "metrics.prometheusRule.enabled=true", check=False)
    assert refused.returncode != 0 and "metrics.prometheusRule.runbookURL is required" in refused.stderr


def test_the_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar():
    rendered = render("--set", "metrics.grafanaDashboard.enabled=true", "--set", "metrics.grafanaDashboard.namespace=monitoring")
    (configmap,) = [doc for doc in rendered if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["signing-key-operator.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(panel["targets"] for panel in dashboard["panels"])
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Active key age", "Time to next rotation", "Rotations by reason", "TokenRevocations in force", "Served JWKS lag"} <= titles


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses them as recording rules (it has no offline query check)."""
    rules = [{"record": f"dashboard:expression_{i}", "expr": _plain_promql(e)} for i, e in enumerate(_dashboard_expressions())]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool_run("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert result.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout + result.stderr


def _exported(metrics: str) -> dict[str, int]:
    """Metric name -> number of samples in an exposition."""
    counts: dict[str, int] = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass(frozen=True)
class RealRun:
    namespace: str
    """Where the policies that rotate, are revoked, hold a revocation and serve at a URL are."""
    refusing_namespace: str
    """Where policy "starved" cannot write its signing Secret."""


def _namespace(core: client.CoreV1Api, prefix: str, labels: dict[str, str] | None = None) -> str:
    """A namespace the session operator watches (t-*)."""
    name = f"t-{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    return name


def _refuse_signing_secret(core: client.CoreV1Api, admission: client.AdmissionregistrationV1Api, namespace: str) -> None:
    """An admission policy refusing the signing Secret of policy "starved" in ``namespace``, as
    an organisation's policy might: the operator's write fails for real."""
    admission.create_validating_admission_policy({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": namespace},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["secrets"]}]},
                 "validations": [{"expression": "object.metadata.name != 'starved-signing'", "message": "no signing Secrets here (test policy)"}]},
    })
    admission.create_validating_admission_policy_binding({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": namespace},
        "spec": {"policyName": namespace, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"refusing": namespace}}}},
    })

    def refused() -> bool:
        probe = client.V1Secret(metadata=client.V1ObjectMeta(name="starved-signing"))
        try:
            core.create_namespaced_secret(namespace, probe)
        except client.ApiException as error:
            return error.status in (403, 422)
        core.delete_namespaced_secret("starved-signing", namespace)
        return False

    wait_until(refused, 30, "the admission policy to refuse the signing Secret", interval=0.5)


@pytest.fixture(scope="module")
def real_run(api_client, operator, signingkeypolicy_crd) -> RealRun:
    """Policies that exercise every series the alerts and panels read, on the session operator."""
    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    namespace = _namespace(core, "monitoring")
    refusing = _namespace(core, "refusing")
    core.patch_namespace(refusing, {"metadata": {"labels": {"refusing": refusing}}})
    _refuse_signing_secret(core, admission, refusing)
    policies, revocations = Policies(api_client, namespace), Revocations(api_client, namespace)
    # A policy that rotates by annotation and is revoked: rotations by reason, key age, next rotation.
    policies.create("watched", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    policies.wait_ready("watched")
    policies.annotate("watched", {"signingkeys.dev/rotate": "dashboard-check"})
    wait_until(lambda: len(policies.get("watched")["status"].get("keys") or []) >= 2, 20, "the rotate annotation's next key")
    policies.annotate("watched", {"signingkeys.dev/revoke-kid": policies.get("watched")["status"]["activeKid"]})
    wait_until(lambda: 'reason="emergency"' in operator.metrics(), 20, "the emergency rotation")
    # A TokenRevocation in force: revocations in force and unpublished.
    revocations.create("one-token", {"policyName": "watched", "jti": "dashboard-check",
                                     "expiresAt": (datetime.now(timezone.utc) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")})
    wait_until(lambda: (policies.get("watched")["status"].get("revocations") or {}).get("inForce") == 1, 20, "the revocation in force")
    # A policy with a servedAt URL that nothing serves: the served lag and its grace.
    policies.create("served", {**FAST_SPEC, "jwks": {**FAST_SPEC["jwks"], "servedAt": [f"http://127.0.0.1:{free_port()}/jwks.json"]}})
    wait_until(lambda: (policies.get("served").get("status") or {}).get("servedAt"), 30, "the servedAt URL's read-back in status")
    # A policy the admission policy keeps from writing its signing Secret: reconcile errors, Ready=False.
    refused = Policies(api_client, refusing)
    refused.create("starved", FAST_SPEC)
    wait_until(lambda: next((c["reason"] for c in (refused.get("starved").get("status") or {}).get("conditions") or []
                             if c["type"] == "Ready"), None) == "ReconcileFailed", 60, "Ready=False, ReconcileFailed")
    yield RealRun(namespace, refusing)
    admission.delete_validating_admission_policy_binding(refusing)
    admission.delete_validating_admission_policy(refusing)
    core.delete_namespace(refusing)
    core.delete_namespace(namespace)


def test_every_metric_the_alerts_and_the_dashboard_read_is_exported_after_a_real_run(real_run, operator):
    metrics = operator.metrics()
    exported = _exported(metrics)
    read = {name for e in [rule["expr"] for rule in _alerts()] + _dashboard_expressions() for name in METRIC.findall(e)}
    print("metric the alerts or dashboard read: samples in the operator's /metrics")
    for name in sorted(read):
        print(f"  {name}: {exported.get(name, 0)}")
    assert read - exported.keys() == set(), f"read but not exported: {sorted(read - exported.keys())}"
    # The series the alerts would fire on exist with the labels they group by.
    assert f'signing_key_operator_policy_ready{{namespace="{real_run.refusing_namespace}",policy="starved",reason="ReconcileFailed"}} 0.0' in metrics
    assert f'signing_key_operator_policy_ready{{namespace="{real_run.namespace}",policy="watched",reason="KeysPublished"}} 1.0' in metrics
    assert f'signing_key_operator_jwks_served_grace_seconds{{namespace="{real_run.namespace}",policy="served"}}' in metrics
    assert re.search(r'signing_key_operator_reconcile_errors_total\{kind="\w+"\} [1-9]', metrics)
    assert f'signing_key_operator_revocations_in_force{{namespace="{real_run.namespace}",policy="watched"}} 1.0' in metrics


class Prometheus:
    """A real Prometheus (Debian's, beside promtool) scraping one target every second, with
    rule files, on loopback; its HTTP API answers queries."""

    def __init__(self, directory: Path, target: str, job: str, target_namespace: str, rule_files: list[Path]):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{
                "job_name": job, "honor_labels": True,
                "static_configs": [{"targets": [target], "labels": {"namespace": target_namespace}}],
            }],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = shutil.which("prometheus")
        assert prometheus, "prometheus not found: `make test` installs Debian's prometheus package"
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [prometheus, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def query(self, expression: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def ready(self) -> bool:
        assert self.process.poll() is None, "prometheus exited:\n" + self.log.read_text(errors="replace")[-3000:]
        try:
            return bool(self.query("up == 1"))
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def test_a_real_prometheus_scraping_the_operator_answers_every_panel_and_evaluates_the_alerts(real_run, operator, tmp_path):
    """The chart's rules loaded into a real Prometheus that scrapes the real operator as the
    ServiceMonitor would (job <fullname>-metrics, honorLabels, the target's namespace label):
    every panel's query returns series, and the alerts for the policy that cannot reconcile are
    pending (their `for` has not passed) while the operator-down alert is not."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rules()}))
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{operator.metrics_port}", "sko-signing-key-operator-metrics", "sko-system", [rules])
    try:
        wait_until(prometheus.ready, 60, "prometheus to scrape the operator", interval=0.5)
        # rate() and increase() need two samples in their window; a few scrapes more than that.
        wait_until(lambda: prometheus.query("count_over_time(up[1m]) >= 5"), 30, "five scrapes", interval=0.5)
        print("dashboard query: series a real Prometheus returns")
        for expression in _dashboard_expressions():
            query = _plain_promql(expression.replace("$__rate_interval", "1m"))
            result = prometheus.query(query)
            print(f"  {len(result):3d}  {query}")
            assert result, f"no series for the dashboard's {expression!r}"

        def pending(alert: str, **labels: str) -> list[dict]:
            matchers = "".join(f', {key}="{value}"' for key, value in labels.items())
            return prometheus.query(f'ALERTS{{alertname="{alert}"{matchers}}}')

        not_ready = wait_until(lambda: pending("SigningKeyPolicyNotReady", namespace=real_run.refusing_namespace), 30,
                               "SigningKeyPolicyNotReady for the starved policy")
        assert [(a["metric"]["policy"], a["metric"]["reason"], a["metric"]["alertstate"]) for a in not_ready] == [
            ("starved", "ReconcileFailed", "pending")]
        errors = wait_until(lambda: pending("SigningKeyOperatorReconcileErrors"), 30, "SigningKeyOperatorReconcileErrors")
        assert {a["metric"]["alertstate"] for a in errors} == {"pending"} and errors[0]["metric"]["namespace"] == "sko-system"
        assert pending("SigningKeyPolicyNotReady", namespace=real_run.namespace) == []
        assert pending("SigningKeyOperatorDown") == []
        print("alerts:", sorted({(a["metric"]["alertname"], a["metric"]["alertstate"]) for a in prometheus.query("ALERTS")}))
    finally:
        prometheus.stop()
