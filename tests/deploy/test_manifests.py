"""Static checks for the deployment files in deploy/ and the Dockerfile.

Nothing here needs a cluster, Docker or a herald binary: the files are
parsed and checked against each other and, where the Rust sources exist,
against the code (metric names in metrics.rs, defaults in config.rs).

Run with tests/deploy/run.sh.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "herald-dashboard.json"
NGINX_CONF = ROOT / "deploy" / "nginx" / "herald.conf"
LOCAL_CLUSTER = ROOT / "deploy" / "local-cluster.sh"
METRICS_RS = ROOT / "crates" / "herald-server" / "src" / "metrics.rs"
CONFIG_RS = ROOT / "crates" / "herald-server" / "src" / "config.rs"
# Per-app settings are declared once, as the fields of herald-core's `App`.
APP_RS = ROOT / "crates" / "herald-core" / "src" / "app.rs"

PORT = 6001
DEFAULT_DRAIN = {"delay": 5.0, "window": 10.0, "deadline": 30.0}

# Used only while crates/herald-server/src/metrics.rs does not exist yet.
FALLBACK_METRICS = {
    "herald_node_connections",
    "herald_connections_active",
    "herald_connections_total",
    "herald_disconnections_total",
    "herald_ws_messages_received_total",
    "herald_ws_messages_sent_total",
    "herald_ws_bytes_received_total",
    "herald_ws_bytes_sent_total",
    "herald_http_requests_total",
    "herald_broadcasts_total",
    "herald_deliveries_total",
    "herald_deliveries_dropped_total",
    "herald_delivery_latency_seconds",
    "herald_broker_publishes_total",
    "herald_broker_receives_total",
    "herald_broker_reconnects_total",
    "herald_broker_errors_total",
    "herald_broker_dropped_total",
    "herald_limit_rejections_total",
    "herald_draining",
    "herald_webhooks_sent_total",
    "herald_webhooks_failed_total",
    "herald_webhooks_dropped_total",
    "herald_webhook_queue_depth",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Webhook metrics are on the dashboard but webhooks are not implemented yet.
# While metrics.rs defines none of them they are tolerated (with a warning);
# as soon as it defines one, all of them must be defined like any other name.
PENDING_METRICS = {
    "herald_webhooks_sent_total",
    "herald_webhooks_failed_total",
    "herald_webhooks_dropped_total",
    "herald_webhook_queue_depth",
}
# Labels added by Prometheus itself, not by herald.
SCRAPE_LABELS = {"instance", "job", "pod", "namespace", "le"}


# --------------------------------------------------------------------------
# helpers


def parse_duration(value) -> float:
    """Seconds from a humantime-style duration ("5s", "1m30s", "500ms") or a number."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().replace(" ", "")
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "secs": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        raise ValueError(f"cannot parse duration {value!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown duration unit in {value!r}")
        total += float(number) * units[unit]
    return total


def load_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


DOCS = load_docs()


def of_kind(kind: str) -> list[dict]:
    return [d for _, d in DOCS if d.get("kind") == kind]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in of_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert found, f"no {kind}{' ' + name if name else ''} in deploy/kubernetes"
    return found[0]


def herald_deployment() -> dict:
    return one("Deployment", "herald")


def herald_container(dep: dict | None = None) -> dict:
    dep = dep or herald_deployment()
    containers = dep["spec"]["template"]["spec"]["containers"]
    for c in containers:
        if c["name"] == "herald":
            return c
    return containers[0]


def selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def herald_toml() -> dict:
    """The herald.toml carried by the Secret (or ConfigMap) the Deployment mounts."""
    for kind in ("Secret", "ConfigMap"):
        for doc in of_kind(kind):
            data = dict(doc.get("stringData") or {})
            for key, value in (doc.get("data") or {}).items():
                data.setdefault(key, base64.b64decode(value).decode() if kind == "Secret" else value)
            if "herald.toml" in data:
                return tomllib.loads(data["herald.toml"])
    return {}


def container_env(container: dict) -> dict[str, str]:
    """Effective env: ConfigMaps referenced by envFrom, then explicit env (wins)."""
    env: dict[str, str] = {}
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in of_kind("ConfigMap")}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in configmaps:
            prefix = source.get("prefix", "")
            env.update({prefix + k: str(v) for k, v in configmaps[ref["name"]].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def drain_settings() -> dict[str, float]:
    drain = dict(DEFAULT_DRAIN)
    for key, value in (herald_toml().get("drain") or {}).items():
        if key in drain:
            drain[key] = parse_duration(value)
    env = container_env(herald_container())
    for key in drain:
        name = f"HERALD_DRAIN__{key.upper()}"
        if name in env:
            drain[key] = parse_duration(env[name])
    return drain


def prestop_seconds(container: dict) -> float:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = (pre.get("exec") or {}).get("command") or []
    joined = " ".join(str(c) for c in command)
    m = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", joined)
    if m:
        return float(m.group(1))
    return 0.0


def known_metric_names() -> set[str]:
    if METRICS_RS.exists():
        names = set(re.findall(r'"(herald_[a-z0-9_]+)"', METRICS_RS.read_text()))
        assert names, f"{METRICS_RS} defines no \"herald_...\" metric names"
        return names
    return set(FALLBACK_METRICS)


def base_metric(name: str, known: set[str]) -> str:
    if name in known:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


def probe_port(probe: dict, container: dict) -> int | None:
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        for p in container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        return None
    return port


# --------------------------------------------------------------------------
# kubernetes manifests


def test_every_yaml_parses_and_has_kind():
    assert DOCS, "no YAML documents found in deploy/kubernetes"
    for path, doc in DOCS:
        assert "kind" in doc and "apiVersion" in doc, f"{path.name}: document without kind/apiVersion"


def test_kustomization_lists_every_manifest():
    kust = one("Kustomization")
    resources = kust.get("resources", [])
    for res in resources:
        assert (K8S / res).exists(), f"kustomization.yaml lists missing file {res}"
    manifests = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml", "kustomization.yml"}
    assert manifests == set(resources), f"kustomization resources {resources} != files {sorted(manifests)}"


def test_deployment_replicas_and_port():
    dep = herald_deployment()
    assert dep["spec"].get("replicas", 1) >= 2
    ports = [p["containerPort"] for p in herald_container(dep).get("ports", [])]
    assert PORT in ports


def test_deployment_selector_matches_pod_labels():
    dep = herald_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(dep["spec"]["selector"]["matchLabels"], labels)


def test_probes():
    container = herald_container()
    live = container["livenessProbe"]
    ready = container["readinessProbe"]
    assert live["httpGet"]["path"] == "/up"
    assert probe_port(live, container) == PORT
    assert ready["httpGet"]["path"] == "/ready"
    assert probe_port(ready, container) == PORT
    assert ready.get("periodSeconds", 10) <= 5, "readiness must notice a drain quickly"


def test_security_context():
    dep = herald_deployment()
    pod_sc = dep["spec"]["template"]["spec"].get("securityContext") or {}
    sc = herald_container(dep).get("securityContext") or {}
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    assert uid == 10001, "must match USER 10001 in the Dockerfile"


def test_resources_set():
    res = herald_container().get("resources") or {}
    for section in ("requests", "limits"):
        assert "cpu" in res.get(section, {}) and "memory" in res.get(section, {}), section


def test_config_mounted_from_secret():
    dep = herald_deployment()
    container = herald_container(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
    args = container.get("args", []) + container.get("command", [])
    assert "/etc/herald/herald.toml" in args, "herald must be started with --config /etc/herald/herald.toml"
    mounted = False
    for mount in container.get("volumeMounts", []):
        vol = volumes.get(mount["name"], {})
        if "secret" not in vol:
            continue
        items = vol["secret"].get("items")
        path = f"{mount['mountPath'].rstrip('/')}/"
        if mount.get("subPath"):
            mounted |= mount["mountPath"] == "/etc/herald/herald.toml"
        elif items:
            mounted |= any(path + i["path"] == "/etc/herald/herald.toml" for i in items)
        else:
            mounted |= path + "herald.toml" == "/etc/herald/herald.toml"
        secret_names = {d["metadata"]["name"] for d in of_kind("Secret")}
        assert vol["secret"]["secretName"] in secret_names
    assert mounted, "/etc/herald/herald.toml is not mounted from a Secret"
    assert herald_toml().get("apps"), "secret.yaml herald.toml defines no [[apps]]"


def test_secret_config_agrees_with_deployment():
    cfg = herald_toml()
    assert cfg.get("port", PORT) == PORT
    for app in cfg.get("apps", []):
        for field in ("id", "key", "secret"):
            assert app.get(field), f"app without {field}"


def test_redis_url_env():
    env = container_env(herald_container())
    assert env.get("HERALD_REDIS_URL", "").startswith(("redis://", "rediss://"))


def test_termination_grace_covers_drain():
    dep = herald_deployment()
    grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    pre = prestop_seconds(herald_container(dep))
    drain = drain_settings()
    assert pre > 0, "a preStop sleep is expected (endpoint removal races SIGTERM)"
    orderly = pre + drain["delay"] + drain["window"]
    assert grace > orderly, f"grace {grace}s <= preStop {pre}s + delay + window = {orderly}s (no margin)"
    assert grace >= drain["deadline"], f"grace {grace}s < drain.deadline {drain['deadline']}s"
    # The grace period starts with preStop, the deadline with SIGTERM.
    assert grace >= pre + drain["deadline"], f"grace {grace}s < preStop + deadline = {pre + drain['deadline']}s"
    assert drain["delay"] + drain["window"] <= drain["deadline"]


def test_prometheus_annotations():
    ann = herald_deployment()["spec"]["template"]["metadata"].get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true"
    assert str(ann.get("prometheus.io/port")) == str(PORT)
    assert ann.get("prometheus.io/path") == "/metrics"


def test_topology_spread():
    dep = herald_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    spread = dep["spec"]["template"]["spec"].get("topologySpreadConstraints") or []
    assert spread
    for c in spread:
        assert selector_matches(c["labelSelector"]["matchLabels"], labels)


def test_service_selects_herald_pods():
    svc = one("Service", "herald")
    labels = herald_deployment()["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(svc["spec"]["selector"], labels)
    assert svc["spec"].get("sessionAffinity", "None") == "None"
    ports = svc["spec"]["ports"]
    assert any(p["port"] == PORT for p in ports)
    container = herald_container()
    for p in ports:
        target = p.get("targetPort", p["port"])
        if isinstance(target, str):
            assert target in {cp.get("name") for cp in container["ports"]}
        else:
            assert target == PORT


def test_selectors_do_not_overlap_with_redis():
    herald_labels = herald_deployment()["spec"]["template"]["metadata"]["labels"]
    svc = one("Service", "herald")
    for dep in of_kind("Deployment"):
        if dep["metadata"]["name"] == "herald":
            continue
        other = dep["spec"]["template"]["metadata"]["labels"]
        assert not selector_matches(svc["spec"]["selector"], other), dep["metadata"]["name"]
        assert not selector_matches(dep["spec"]["selector"]["matchLabels"], herald_labels)


def test_pdb():
    pdb = one("PodDisruptionBudget")
    labels = herald_deployment()["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable") == 1


def test_hpa():
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref["kind"] == "Deployment" and ref["name"] == herald_deployment()["metadata"]["name"]
    assert hpa["spec"].get("minReplicas", 1) >= 2
    pods_metrics = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert any(m["pods"]["metric"]["name"] == "herald_node_connections" for m in pods_metrics)
    assert "herald_node_connections" in known_metric_names()
    resources = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert any(m["resource"]["name"] == "cpu" for m in resources)
    scale_down = hpa["spec"]["behavior"]["scaleDown"]
    assert scale_down.get("stabilizationWindowSeconds", 300) >= 300


# --------------------------------------------------------------------------
# grafana


def test_dashboard_parses():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"]
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "DS_PROMETHEUS" in variables
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["expr"].count("{") == t["expr"].count("}"), t["expr"]


def test_dashboard_metrics_exist_in_code():
    known = known_metric_names()
    used = set(re.findall(r"herald_[a-z_]+", DASHBOARD.read_text()))
    assert used
    unknown = {n for n in used if base_metric(n, known) not in known}
    pending = unknown & PENDING_METRICS
    if pending and not (known & PENDING_METRICS):
        warnings.warn(f"dashboard panels for metrics not in the code yet: {sorted(pending)}")
        unknown -= pending
    source = METRICS_RS if METRICS_RS.exists() else "the fallback list"
    assert not unknown, f"dashboard uses metrics not defined in {source}: {sorted(unknown)}"


def test_dashboard_labels_exist_in_code():
    assert METRICS_RS.exists(), "crates/herald-server/src/metrics.rs is missing"
    code = METRICS_RS.read_text()
    dash = json.loads(DASHBOARD.read_text())
    labels = set()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            for group in re.findall(r"\bby\s*\(([^)]*)\)", t["expr"]):
                labels.update(x.strip() for x in group.split(",") if x.strip())
            for matchers in re.findall(r"\{([^}]*)\}", t["expr"]):
                labels.update(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers))
    missing = sorted(lbl for lbl in labels - SCRAPE_LABELS if f'"{lbl}"' not in code)
    assert not missing, f"dashboard uses labels metrics.rs never sets: {missing}"


def test_dashboard_covers_key_metrics():
    used = {base_metric(n, FALLBACK_METRICS) for n in re.findall(r"herald_[a-z_]+", DASHBOARD.read_text())}
    for name in (
        "herald_node_connections",
        "herald_connections_active",
        "herald_disconnections_total",
        "herald_delivery_latency_seconds",
        "herald_deliveries_dropped_total",
        "herald_broker_reconnects_total",
        "herald_draining",
        "herald_http_requests_total",
    ):
        assert name in used, name


# --------------------------------------------------------------------------
# code defaults the deployment files rely on


def test_metric_names_in_code():
    assert METRICS_RS.exists(), "crates/herald-server/src/metrics.rs is missing"
    names = known_metric_names()
    for name in ("herald_node_connections", "herald_draining"):
        assert name in names, f"{name} (used by hpa.yaml / dashboard) missing from metrics.rs"


def _secs_patterns(seconds: int) -> list[str]:
    ms = seconds * 1000
    return [
        rf"from_secs\(\s*{seconds}\s*\)",
        rf"from_millis\(\s*{ms}\s*\)",
        rf"from_millis\(\s*{ms // 1000}_000\s*\)",
        rf'"{seconds}\s*s"',
        rf'"{seconds}\s*sec',
        rf"\b{seconds}_000\b",
    ]


def test_code_defaults():
    assert CONFIG_RS.exists(), "crates/herald-server/src/config.rs is missing"
    # config.rs, plus src/config/*.rs should it grow into a module directory.
    text = _config_source()
    assert re.search(r"\b6001\b", text), "default port 6001 not found in config.rs"
    for key, seconds in (("delay", 5), ("window", 10), ("deadline", 30)):
        assert re.search(rf"\b{key}\b", text), f"drain field {key!r} not found in config.rs"
        assert any(re.search(p, text) for p in _secs_patterns(seconds)), (
            f"drain.{key} default of {seconds}s not found in config.rs "
            "(deploy/kubernetes relies on 5s/10s/30s)"
        )


def _config_source() -> str:
    sources = [CONFIG_RS, *sorted(CONFIG_RS.with_suffix("").glob("**/*.rs")), APP_RS]
    return "\n".join(p.read_text() for p in sources)


def _assert_keys_in_config(cfg: dict, code: str, where: str, prefix: str = "") -> None:
    """herald's config structs deny unknown fields: every key must be a `pub key:` field."""
    for key, value in cfg.items():
        assert re.search(rf"\bpub\s+{re.escape(key)}\s*:", code), (
            f"{where}: key {prefix}{key!r} is not a config field in config.rs (unknown keys fail start-up)"
        )
        if isinstance(value, dict):
            _assert_keys_in_config(value, code, where, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                _assert_keys_in_config(item, code, where, f"{prefix}{key}[].")


def _local_cluster_toml() -> dict:
    m = re.search(r"<<'TOML'\n(.*?)\nTOML\n", LOCAL_CLUSTER.read_text(), re.S)
    assert m, "local-cluster.sh: herald.toml heredoc not found"
    return tomllib.loads(m.group(1))


def test_config_files_use_known_keys():
    assert CONFIG_RS.exists(), "crates/herald-server/src/config.rs is missing"
    code = _config_source()
    _assert_keys_in_config(herald_toml(), code, "secret.yaml herald.toml")
    _assert_keys_in_config(_local_cluster_toml(), code, "local-cluster.sh herald.toml")


def test_env_vars_use_known_keys():
    assert CONFIG_RS.exists(), "crates/herald-server/src/config.rs is missing"
    code = _config_source()
    env = container_env(herald_container())
    # Also the commented-out examples in the ConfigMap.
    env.update(dict.fromkeys(re.findall(r"\b(HERALD_[A-Z_]+):", (K8S / "configmap.yaml").read_text()), ""))
    for name in env:
        if not name.startswith("HERALD_"):
            continue
        path = name[len("HERALD_"):].lower().split("__")
        # The environment's keys are derived from the config tree: a top-level field is settable.
        assert re.search(rf"\bpub\s+{re.escape(path[0])}\s*:", code), (
            f"{name}: {path[0]!r} is not an env-settable key in config.rs"
        )
        for key in path:
            assert re.search(rf"\bpub\s+{key}\s*:", code), f"{name}: {key!r} is not a config field"


# --------------------------------------------------------------------------
# Dockerfile, nginx, scripts


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"cargo build --release\b.*-p herald-server", text)
    assert re.search(r"^EXPOSE\s+6001\b", text, re.M)
    assert re.search(r"^USER\s+10001", text, re.M)
    assert re.search(r'^ENTRYPOINT\s+\["herald",\s*"start"\]', text, re.M)
    assert len(re.findall(r"^FROM\s", text, re.M)) >= 2, "multi-stage build expected"
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in ("target/", ".git/", "node_modules/"):
        assert entry in ignore, entry


def test_nginx_conf():
    text = NGINX_CONF.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", code)
    for port in (6001, 6002, 6003):
        assert re.search(rf"server\s+127\.0\.0\.1:{port}\b", code)
    assert not re.search(r"\b(ip_hash|sticky|hash\s+\$)", code), "no sticky sessions"
    assert re.search(r"location\s+/app/", code) and re.search(r"location\s+/apps/", code)
    assert re.search(r"proxy_read_timeout\s+3600s", code)
    assert re.search(r"proxy_buffering\s+off", code)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade", code)


def test_nginx_conf_syntax(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/tmp/body;
    proxy_temp_path {tmp_path}/tmp/proxy;
    fastcgi_temp_path {tmp_path}/tmp/fastcgi;
    uwsgi_temp_path {tmp_path}/tmp/uwsgi;
    scgi_temp_path {tmp_path}/tmp/scgi;
    include {NGINX_CONF};
}}
"""
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_local_cluster_script_syntax():
    result = subprocess.run(["bash", "-n", str(LOCAL_CLUSTER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# the helpers themselves


@pytest.mark.parametrize(
    "text,seconds",
    [("5s", 5), ("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("2m", 120), (30, 30), ("45", 45)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
