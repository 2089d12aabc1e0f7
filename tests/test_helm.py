"""The Helm chart (deploy/helm/eventmail): lint, render, offline schema validation and the promises
operators rely on (security context, probes, grace period, rolling on config change, settings that
exist, alerts equal to deploy/prometheus/eventmail-alerts.yaml).

helm comes from ``deploy/helm/install-tools.sh``, promtool from ``deploy/prometheus/install.sh`` (``make
test`` runs both first); a missing tool fails the tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from consumer.settings import PipelineSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "eventmail"
CI_DIR = CHART / "ci"
CI_VALUES = sorted(CI_DIR.glob("*-values.yaml"))
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "eventmail-alerts.yaml"
KUBE_VERSION = "1.31.0"
RELEASE = "mail"
NAMESPACE = "eventmail"

CORE_KINDS = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceAccount"}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
OPTIONAL_KINDS = {"Ingress"}  # the console's
SECRET_ENV = {
    "EVENTMAIL_ESP_CONNECTIONS",
    "EVENTMAIL_SECRET_KEY",
    "EVENTMAIL_SECRETS",
    "EVENTMAIL_KAFKA__EXTRA",
    "EVENTMAIL_SCHEMA_REGISTRY__BASIC_AUTH",
}
Manifest = dict[str, Any]


def _tool(name: str) -> Path:
    cache = Path(os.environ.get("EVENTMAIL_CACHE", ROOT / ".cache"))
    path = cache / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run deploy/helm/install-tools.sh (make tools)")
    return path


@pytest.fixture(scope="module")
def helm() -> Path:
    return _tool("helm")


def _run(cmd: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=120)


def render(helm: Path, *args: str | Path) -> list[Manifest]:
    """``helm template`` with these extra arguments; the manifests as dicts."""
    cmd: list[str | Path] = [helm, "template", RELEASE, CHART, "--namespace", NAMESPACE]
    result = _run([*cmd, "--kube-version", KUBE_VERSION, *args])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_fails(helm: Path, *args: str) -> str:
    result = _run([helm, "template", RELEASE, CHART, "--kube-version", KUBE_VERSION, *args])
    assert result.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return result.stderr


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = [
        m
        for m in of_kind(manifests, kind)
        if component is None or m["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def settings_configmap(manifests: list[Manifest]) -> Manifest:
    found = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-config")]
    assert len(found) == 1
    return found[0]


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Manifest = containers[0]
    return result


def values_of(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) or {}
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def rendered(helm: Path) -> dict[str, list[Manifest]]:
    """Every ci values file rendered once: file stem -> manifests."""
    return {path.name.removesuffix("-values.yaml"): render(helm, "-f", path) for path in CI_VALUES}


def settings_env_names() -> set[str]:
    """Every EVENTMAIL_* variable the Settings model reads (``__`` for nested models)."""
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        names.add(f"EVENTMAIL_{field.upper()}")
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(f"EVENTMAIL_{field.upper()}__{sub.upper()}" for sub in annotation.model_fields)
    return names


def test_ci_values_files_are_the_documented_three() -> None:
    assert [p.name for p in CI_VALUES] == ["default-values.yaml", "full-values.yaml", "minimal-values.yaml"]


def test_tool_versions(helm: Path) -> None:
    result = _run([helm, "version", "--template", "{{.Version}}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3."), result.stdout


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "chart-defaults")
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    cmd: list[str | Path] = [helm, "lint", "--strict", CHART, "--kube-version", KUBE_VERSION]
    if values is not None:
        cmd += ["-f", values]
    result = _run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", ["default", "full", "minimal"])
def test_manifests_are_valid_kubernetes(rendered: dict[str, list[Manifest]], name: str) -> None:
    manifests = rendered[name]
    kinds = {m["kind"] for m in manifests}
    allowed = CORE_KINDS | CRD_KINDS | OPTIONAL_KINDS
    assert kinds <= allowed, f"unexpected kinds {kinds - allowed}"
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; checked structurally below
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {manifest['kind']}/{manifest['metadata']['name']}: {path}: {exc.message}")
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_default_and_full_render_what_they_enable(rendered: dict[str, list[Manifest]]) -> None:
    default = {m["kind"] for m in rendered["default"]}
    assert default == CORE_KINDS
    full = {m["kind"] for m in rendered["full"]}
    assert full == (CORE_KINDS - {"Secret"}) | CRD_KINDS | OPTIONAL_KINDS  # full uses existingSecret
    assert not [m for m in rendered["default"] if m["metadata"]["name"].endswith("-console")]
    minimal = rendered["minimal"]
    assert {m["kind"] for m in minimal} == {"Deployment", "Service", "ConfigMap", "Secret"}
    assert one(minimal, "Deployment")["metadata"]["labels"]["app.kubernetes.io/component"] == "consumer"
    assert one(minimal, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


@pytest.mark.parametrize("name", ["default", "full", "minimal"])
def test_pods_are_locked_down(rendered: dict[str, list[Manifest]], name: str) -> None:
    for deployment in of_kind(rendered[name], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        ctx = container(deployment)["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["privileged"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"


@pytest.mark.parametrize("name", ["default", "full"])
def test_probes_ports_and_commands(rendered: dict[str, list[Manifest]], name: str) -> None:
    expected = {"consumer": ("run", 9400), "aggregator": ("aggregate", 9401)}
    for component, (command, port) in expected.items():
        deployment = one(rendered[name], "Deployment", component)
        main = container(deployment)
        assert main["args"] == [command]
        assert main["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["EVENTMAIL_HTTP__PORT"] == str(port)
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        service = one(rendered[name], "Service", component)
        assert service["spec"]["ports"] == [
            {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
        ]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert service["spec"]["selector"] == selector
        assert selector["app.kubernetes.io/component"] == component


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.name)
def test_termination_grace_period_follows_the_drain_timeout(
    rendered: dict[str, list[Manifest]], values: Path
) -> None:
    data = values_of(values)
    chart_defaults = values_of(CHART / "values.yaml")
    drain = (data.get("config") or {}).get("pipeline", {}).get("drain_timeout_seconds")
    if drain is None:
        drain = chart_defaults["config"]["pipeline"]["drain_timeout_seconds"]
    margin_key = "terminationGracePeriodMarginSeconds"
    margin = data.get(margin_key, chart_defaults[margin_key])
    manifests = rendered[values.name.removesuffix("-values.yaml")]
    configmap = settings_configmap(manifests)
    assert float(configmap["data"]["EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS"]) == drain
    for deployment in of_kind(manifests, "Deployment"):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == math.ceil(drain) + margin
        assert grace > drain


def test_termination_grace_period_examples(helm: Path, rendered: dict[str, list[Manifest]]) -> None:
    default = one(rendered["default"], "Deployment", "consumer")
    assert default["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 25 + 15
    full = one(rendered["full"], "Deployment", "consumer")
    assert full["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 43 + 20
    manifests = render(
        helm,
        "--set",
        "config.pipeline.drain_timeout_seconds=90",
        "--set",
        "terminationGracePeriodMarginSeconds=5",
    )
    for deployment in of_kind(manifests, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 95
    # Without the value in config, the service's default (25 s) is the base.
    manifests = render(helm, "--set", "config.pipeline=null")
    pod = one(manifests, "Deployment", "consumer")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == math.ceil(PipelineSettings().drain_timeout_seconds) + 15


def _checksums(manifests: list[Manifest]) -> dict[str, tuple[str, str]]:
    result = {}
    for deployment in of_kind(manifests, "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        for key in ("checksum/config", "checksum/secret"):
            assert re.fullmatch(r"[0-9a-f]{64}", annotations[key]), key
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        result[component] = (annotations["checksum/config"], annotations["checksum/secret"])
    return result


def test_pods_roll_when_settings_or_credentials_change(
    helm: Path, rendered: dict[str, list[Manifest]]
) -> None:
    base = _checksums(rendered["default"])
    assert base["consumer"] == base["aggregator"]
    config_changed = _checksums(render(helm, "--set", "config.pipeline.max_in_flight=100"))
    assert config_changed["consumer"][0] != base["consumer"][0]
    assert config_changed["consumer"][1] == base["consumer"][1]
    secret_changed = _checksums(render(helm, "--set", "secretConfig.secret_key=a-new-key"))
    assert secret_changed["consumer"][0] == base["consumer"][0]
    assert secret_changed["consumer"][1] != base["consumer"][1]
    # Same values, same checksums: a plain `helm upgrade` does not restart anything.
    assert _checksums(render(helm, "-f", CI_DIR / "default-values.yaml")) == base
    # An existing Secret is out of the chart's sight: its checksum follows the name only.
    existing = _checksums(render(helm, "--set", "existingSecret=creds"))
    assert existing["consumer"][1] == hashlib.sha256(b"creds").hexdigest()


@pytest.mark.parametrize("name", ["default", "full", "minimal"])
def test_every_rendered_variable_is_a_setting(rendered: dict[str, list[Manifest]], name: str) -> None:
    known = settings_env_names()
    manifests = rendered[name]
    configmap = settings_configmap(manifests)
    assert configmap["data"], "the ConfigMap carries the settings"
    names = set(configmap["data"])
    assert not names & SECRET_ENV, "credentials must not be in the ConfigMap"
    for secret in of_kind(manifests, "Secret"):
        names |= set(secret.get("stringData") or {})
        assert set(secret.get("stringData") or {}) <= SECRET_ENV
    for deployment in of_kind(manifests, "Deployment"):
        names |= {e["name"] for e in container(deployment)["env"] if e["name"].startswith("EVENTMAIL_")}
    assert names
    assert names <= known, f"not settings of consumer/settings.py: {sorted(names - known)}"


@pytest.mark.parametrize("name", ["default", "full", "minimal"])
def test_rendered_environment_loads_as_settings(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.upper().startswith("EVENTMAIL_"):
            monkeypatch.delenv(key)
    manifests = rendered[name]
    env: dict[str, str] = dict(settings_configmap(manifests)["data"])
    for secret in of_kind(manifests, "Secret"):
        env.update(secret.get("stringData") or {})
    consumer = container(one(manifests, "Deployment", "consumer"))
    env.update({e["name"]: e["value"] for e in consumer["env"] if "value" in e})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    data = values_of(CI_DIR / f"{name}-values.yaml")
    defaults = values_of(CHART / "values.yaml")["config"]
    expected_servers = (
        (data.get("config") or {})
        .get("kafka", {})
        .get("bootstrap_servers", defaults["kafka"]["bootstrap_servers"])
    )
    assert settings.kafka.bootstrap_servers == expected_servers
    assert settings.http.port == 9400
    if name == "full":
        assert settings.pipeline.drain_timeout_seconds == 42.5
        assert settings.pipeline.max_retry_pending == 1_000_000
        assert settings.users == {"u-1": "ops@example.com", "u-2": "sales-lead@example.com"}
        assert settings.schema_registry.url == "https://schema-registry.example.com"
        assert settings.log_level == "DEBUG"  # extraEnv wins over the ConfigMap


def test_credentials_go_to_a_secret(helm: Path) -> None:
    esp = {
        "default": {
            "host": "smtp.example.com",
            "port": 465,
            "encryption": "ssl",
            "login": "u",
            "password": "p",
        }
    }
    extra = {"security.protocol": "SASL_SSL", "sasl.password": "k"}
    manifests = render(
        helm,
        "--set-json",
        f"secretConfig.esp_connections={json.dumps(esp)}",
        "--set-json",
        f"secretConfig.kafka.extra={json.dumps(extra)}",
        "--set-json",
        'secretConfig.secrets={"relay": "s3cret"}',
        "--set",
        "secretConfig.secret_key=Zm9v",
    )
    secret = one(manifests, "Secret")
    data = secret["stringData"]
    assert json.loads(data["EVENTMAIL_ESP_CONNECTIONS"]) == esp
    assert json.loads(data["EVENTMAIL_KAFKA__EXTRA"]) == extra
    assert json.loads(data["EVENTMAIL_SECRETS"]) == {"relay": "s3cret"}
    assert data["EVENTMAIL_SECRET_KEY"] == "Zm9v"
    configmap_text = json.dumps(settings_configmap(manifests))
    assert "s3cret" not in configmap_text
    assert "smtp.example.com" not in configmap_text
    for deployment in of_kind(manifests, "Deployment"):
        refs = [ref.get("secretRef", {}).get("name") for ref in container(deployment)["envFrom"]]
        assert secret["metadata"]["name"] in refs


def test_existing_secret_replaces_the_chart_secret(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["full"]
    assert not of_kind(manifests, "Secret")
    for deployment in of_kind(manifests, "Deployment"):
        refs = [ref.get("secretRef", {}).get("name") for ref in container(deployment)["envFrom"]]
        assert "eventmail-credentials" in refs


def test_values_schema_rejects_mistakes(helm: Path) -> None:
    typo = render_fails(helm, "--set", "config.kafka.bootstrap_server=x")
    assert "Additional property bootstrap_server is not allowed" in typo
    # Credentials never go into the ConfigMap.
    assert "Additional property secret_key is not allowed" in render_fails(
        helm, "--set", "config.secret_key=x"
    )
    # The HTTP port is set per component (consumer.port, aggregator.port).
    assert "Additional property port is not allowed" in render_fails(helm, "--set", "config.http.port=1")
    assert "config.pipeline.input_format" in render_fails(helm, "--set", "config.pipeline.input_format=xml")
    assert "consumer.replicaCount" in render_fails(helm, "--set", "consumer.replicaCount=-1")
    assert "secretConfig" in render_fails(helm, "--set", "secretConfig.esp_connections.x.port=70000")


def test_console_component(helm: Path, rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["full"]
    main = container(one(manifests, "Deployment", "console"))
    assert main["args"] == ["console"]
    assert main["ports"] == [{"name": "http", "containerPort": 9410, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["EVENTMAIL_CONSOLE__PORT"] == "9410"
    assert env["EVENTMAIL_CONSOLE__AUTH"] == "proxy"
    assert env["EVENTMAIL_CONSOLE__PROXY_HEADER"] == "X-Auth-Request-User"
    assert json.loads(env["EVENTMAIL_CONSOLE__TRUSTED_PROXIES"]) == ["10.0.0.0/8"]
    assert json.loads(env["EVENTMAIL_CONSOLE__EDITORS"]) == ["ada", "grace"]
    assert {"secretRef": {"name": "eventmail-console"}} in main["envFrom"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    ingress = one(manifests, "Ingress", "console")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "eventmail-console", "port": {"name": "http"}}
    assert one(manifests, "Service", "console")["spec"]["ports"][0]["port"] == 9410
    refused = render_fails(helm, "--set", "console.enabled=true")
    assert "console.auth=password needs console.existingSecret" in refused
    password = render(helm, "--set", "console.enabled=true", "--set", "console.existingSecret=users")
    env = {e["name"]: e.get("value") for e in container(one(password, "Deployment", "console"))["env"]}
    assert env["EVENTMAIL_CONSOLE__AUTH"] == "password"
    assert "console.auth" in render_fails(helm, "--set", "console.auth=none")


def test_values_schema_covers_every_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    covered: set[str] = set()
    for section in ("config", "secretConfig"):
        for field, sub in schema["properties"][section]["properties"].items():
            nested = sub.get("properties")
            if nested is not None and field not in {"users", "esp_connections", "secrets"}:
                covered |= {f"EVENTMAIL_{field.upper()}__{key.upper()}" for key in nested}
            else:
                covered.add(f"EVENTMAIL_{field.upper()}")
    known = settings_env_names()
    groups = {
        f"EVENTMAIL_{f.upper()}"
        for f, info in Settings.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    }
    assert covered <= known
    # Every leaf setting can be given through the chart; the HTTP port is set per component and the
    # console's settings by its component (console.*, its Secret, console.extraEnv).
    console = {name for name in known if name.startswith("EVENTMAIL_CONSOLE__")}
    assert known - groups - covered - console == {"EVENTMAIL_HTTP__PORT"}


def test_pod_disruption_budgets_select_their_pods(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["full"]
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = one(manifests, "Deployment", component)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    aggregator = one(manifests, "PodDisruptionBudget", "aggregator")["spec"]
    assert aggregator == {"minAvailable": 1, "selector": aggregator["selector"]}


def test_service_monitor(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["full"]
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression == {
        "key": "app.kubernetes.io/component",
        "operator": "In",
        "values": ["consumer", "aggregator"],
    }
    services = of_kind(manifests, "Service")
    scraped = [s for s in services if s["metadata"]["labels"][expression["key"]] in expression["values"]]
    assert {s["metadata"]["labels"][expression["key"]] for s in services} == {
        "consumer",
        "aggregator",
        "console",
    }
    assert len(scraped) == 2  # the console has no /metrics
    for service in scraped:
        assert selector.items() <= service["metadata"]["labels"].items()
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def test_keda_scaled_object(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["full"]
    scaled = one(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    consumer = one(manifests, "Deployment", "consumer")
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": consumer["metadata"]["name"],
    }
    assert "replicas" not in consumer["spec"], "KEDA owns the replica count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    config = settings_configmap(manifests)["data"]
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == [
        config["EVENTMAIL_TOPICS__LMS"],
        config["EVENTMAIL_TOPICS__CALL_LOGIC"],
    ]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == config["EVENTMAIL_GROUP_ID"]
        assert meta["bootstrapServers"] == config["EVENTMAIL_KAFKA__BOOTSTRAP_SERVERS"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert int(meta["lagThreshold"]) == 1000
        assert trigger["authenticationRef"] == {"name": "eventmail-kafka-auth"}
    aggregator = one(manifests, "Deployment", "aggregator")
    assert aggregator["spec"]["replicas"] == 2


def test_alert_rules_file_is_the_chart_rules(helm: Path, rendered: dict[str, list[Manifest]]) -> None:
    assert (CHART / "files" / "eventmail-alerts.yaml").read_bytes() == ALERTS_FILE.read_bytes(), (
        "copy deploy/prometheus/eventmail-alerts.yaml to deploy/helm/eventmail/files/"
    )
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    assert groups
    manifests = render(helm, "--set", "prometheusRule.enabled=true")
    rule = one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == groups

    # full: additional labels on every alert, the rule's own labels unchanged.
    full_groups = one(rendered["full"], "PrometheusRule")["spec"]["groups"]
    assert len(full_groups) == len(groups)
    for mine, theirs in zip(groups, full_groups, strict=True):
        for plain, labelled in zip(mine["rules"], theirs["rules"], strict=True):
            assert labelled["labels"] == {**plain["labels"], "team": "mail-platform"}
            assert {k: v for k, v in labelled.items() if k != "labels"} == {
                k: v for k, v in plain.items() if k != "labels"
            }


def test_runbook_base_url_override(helm: Path) -> None:
    manifests = render(
        helm,
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.runbookBaseUrl=https://wiki.example/ops",
    )
    rules = [r for g in one(manifests, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        assert re.fullmatch(r"https://wiki\.example/ops#[a-z0-9-]+", rule["annotations"]["runbook_url"])


def test_alert_rules_pass_prometheus_rule_checks() -> None:
    promtool = _tool("promtool")
    for path in (ALERTS_FILE, CHART / "files" / "eventmail-alerts.yaml"):
        result = _run([promtool, "check", "rules", path])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 10 rules found" in result.stdout


def dashboard_configmaps(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_config_map(rendered: dict[str, list[Manifest]]) -> None:
    dashboard = dashboard_configmaps(rendered["full"])
    assert len(dashboard) == 1
    meta = dashboard[0]["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["namespace"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "Mail"}
    source = (ROOT / "deploy" / "grafana" / "eventmail.json").read_text()
    assert json.loads(dashboard[0]["data"]["eventmail.json"]) == json.loads(source)
    assert not dashboard_configmaps(rendered["default"])


def test_image_reference(helm: Path, rendered: dict[str, list[Manifest]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    default = container(one(rendered["default"], "Deployment", "consumer"))
    assert default["image"] == f"ghcr.io/eventmail/eventmail:{chart['appVersion']}"
    digest = "sha256:" + "ab" * 32
    pinned = container(one(render(helm, "--set", f"image.digest={digest}"), "Deployment", "consumer"))
    assert pinned["image"] == f"ghcr.io/eventmail/eventmail@{digest}"


def test_dockerfile_matches_the_chart() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert re.search(r"^COPY schemas /opt/eventmail/schemas$", dockerfile, re.M)
    assert "EVENTMAIL_SCHEMA_DIR=/opt/eventmail/schemas" in dockerfile
    assert re.search(r'^ENTRYPOINT \["eventmail"\]$', dockerfile, re.M)
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user is not None, "USER must be numeric so runAsNonRoot can be checked"
    pod = values_of(CHART / "values.yaml")["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert pod["runAsUser"] != 0


def render_notes(helm: Path, tmp_path: Path, values: Path) -> str:
    """NOTES.txt rendered offline (helm template skips it): a copy of the chart wraps it in a ConfigMap."""
    chart = tmp_path / "eventmail"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes-under-test.yaml").write_text(
        '{{- define "notes.under.test" }}' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "notes.under.test" . | quote }}\n'
    )
    cmd: list[str | Path] = [helm, "template", RELEASE, chart, "--namespace", NAMESPACE]
    cmd += ["--kube-version", KUBE_VERSION, "-f", values, "--show-only", "templates/notes-under-test.yaml"]
    result = _run(cmd)
    assert result.returncode == 0, result.stderr
    text: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return text


def test_notes(helm: Path, tmp_path: Path) -> None:
    default = render_notes(helm, tmp_path / "default", CI_DIR / "default-values.yaml")
    assert f"rollout status deploy/{RELEASE}-eventmail-consumer" in default
    assert "port-forward svc/mail-eventmail-aggregator 9401" in default
    assert "Pods get 40s to stop" in default
    assert "WARNING: no ESP connection is configured" in default
    full = render_notes(helm, tmp_path / "full", CI_DIR / "full-values.yaml")
    assert "Replicas: KEDA, 2..12" in full
    assert 'Credentials come from the Secret "eventmail-credentials"' in full
    assert "Pods get 63s to stop" in full
    assert "WARNING" not in full
    minimal = render_notes(helm, tmp_path / "minimal", CI_DIR / "minimal-values.yaml")
    assert "Aggregator" not in minimal
