"""deploy/k8s: manifests pass strict Kubernetes schema checks; generated ConfigMaps match their sources."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import DEFAULT_METRICS_PORT, DEFAULT_PORT
from tests.conftest import require
from tests.kuberay_v1 import RAYCLUSTER

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    require(tool.exists(), "kubernetes-validate not installed (pip install -e '.[dev]')")
    args = [str(tool), "--strict", *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind(name: str, kind: str) -> dict:
    return next(doc for doc in documents(name) if doc["kind"] == kind)


def load_renderer():
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_manifest_passes_strict_validation() -> None:
    """kubernetes-validate --strict accepts every built-in resource in deploy/k8s (RayCluster only warns)."""
    result = kubernetes_validate(*sorted(K8S.glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    assert passed == 8, result.stdout


def test_raycluster_pod_templates_pass_strict_validation(tmp_path) -> None:
    """The RayCluster's head and worker pod templates, wrapped as PodTemplates, pass --strict."""
    cluster = by_kind("raycluster.yaml", "RayCluster")["spec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    wrapped = [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": t}
        for i, t in enumerate(templates)
    ]
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump_all(wrapped))
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == 2


def test_strict_validation_rejects_a_misspelled_field(tmp_path) -> None:
    """Negative control: `readinessProbe` misspelled in the coordinator Deployment fails --strict."""
    broken = tmp_path / "coordinator.yaml"
    broken.write_text((K8S / "coordinator.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    assert kubernetes_validate(broken).returncode != 0


def raycluster_schema_errors(text: str) -> list[str]:
    """Where the RayCluster document in `text` breaks KubeRay's v1 field names or types."""
    from jsonschema import Draft202012Validator  # installed with check-jsonschema

    cluster = next(doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "RayCluster")
    errors = Draft202012Validator(RAYCLUSTER).iter_errors(cluster)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_raycluster_uses_only_kuberay_v1_fields() -> None:
    """The RayCluster's own fields (outside its pod templates) are KubeRay v1 names with the right types."""
    assert raycluster_schema_errors((K8S / "raycluster.yaml").read_text()) == []


@pytest.mark.parametrize(
    ("field", "broken"),
    [
        ("  enableInTreeAutoscaling: true", "  enableInTreeAutoScaling: true"),
        ("      minReplicas: 1", "      minReplica: 1"),
        ('      num-cpus: "0"', "      num-cpus: 0"),  # rayStartParams is map[string]string
        ("    upscalingMode: Default", "    upscalingMode: Fast"),
    ],
    ids=["misspelled-spec-key", "misspelled-group-key", "non-string-param", "unknown-enum"],
)
def test_raycluster_schema_rejects_a_broken_field(field: str, broken: str) -> None:
    """Negative control: a misspelled key, a non-string ray start parameter or an unknown mode fails."""
    text = (K8S / "raycluster.yaml").read_text()
    assert text.count(field) == 1
    assert len(raycluster_schema_errors(text.replace(field, broken))) == 1


def test_worker_group_autoscales_and_the_coordinator_finds_the_head() -> None:
    """Autoscaling is on, minReplicas <= replicas < maxReplicas; the coordinator joins `<name>-head-svc`."""
    cluster = by_kind("raycluster.yaml", "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    group = spec["workerGroupSpecs"][0]
    assert group["minReplicas"] <= group["replicas"] < group["maxReplicas"]
    args = " ".join(
        by_kind("coordinator.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    head = f"{cluster['metadata']['name']}-head-svc:6379"
    assert f"--address={head}" in args and f"--ray-address {head}" in args


def test_prometheus_finds_every_worker_pod_through_a_headless_service() -> None:
    """A headless Service selects the RayCluster's worker pods by KubeRay's labels and maps their metrics
    port; the Kubernetes Prometheus resolves that Service by DNS (no RBAC needed)."""
    cluster = by_kind("raycluster.yaml", "RayCluster")
    group = cluster["spec"]["workerGroupSpecs"][0]
    container_ports = {
        p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"])
    service = next(d for d in documents("raycluster.yaml") if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/node-type": "worker",
    }
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics"}]
    config = yaml.safe_load(by_kind("prometheus.yaml", "ConfigMap")["data"]["prometheus.yml"])
    ray_job = next(job for job in config["scrape_configs"] if job["job_name"] == "ray")
    assert ray_job["dns_sd_configs"][0]["names"] == [service["metadata"]["name"]]
    assert ray_job["dns_sd_configs"][0]["port"] == container_ports["metrics"]


def test_coordinator_is_ready_from_grpc_health_and_exposes_both_ports() -> None:
    """Readiness asks the gRPC health service over TLS on the API port (the kubelet's own gRPC probe
    cannot speak TLS); the coordinator requires TLS and tokens from the gradfleet-secrets Secret; the
    Service maps gRPC and metrics ports."""
    pod = by_kind("coordinator.yaml", "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"localhost:{DEFAULT_PORT}" in probe and "wait_ready" in probe and "/secrets/ca.pem" in probe
    args = " ".join(container["args"])
    assert f"--port {DEFAULT_PORT}" in args and f"--metrics-port {DEFAULT_METRICS_PORT}" in args
    for flag in (
        "--tls-cert /secrets/server.pem",
        "--tls-key /secrets/server.key",
        "--tokens-file /secrets/tokens",
    ):
        assert flag in args
    secrets = {v["name"]: v for v in pod["volumes"]}["secrets"]
    assert secrets["secret"]["secretName"] == "gradfleet-secrets"
    ports = {p["name"]: p["port"] for p in by_kind("coordinator.yaml", "Service")["spec"]["ports"]}
    assert ports == {"grpc": DEFAULT_PORT, "metrics": DEFAULT_METRICS_PORT}


def test_generated_configmaps_match_their_sources() -> None:
    """prometheus.yaml and grafana-dashboard.yaml are what render.py makes of the current sources."""
    renderer = load_renderer()
    for name, render in renderer.RENDERED.items():
        assert (K8S / name).read_text() == render(), f"{name} is stale: run python deploy/k8s/render.py"
    dashboard = by_kind("grafana-dashboard.yaml", "ConfigMap")["data"]["gradfleet.json"]
    source = ROOT / "deploy" / "grafana" / "dashboards" / "gradfleet.json"
    assert json.loads(dashboard) == json.loads(source.read_text())


def test_prometheus_configmap_passes_promtool(tmp_path) -> None:
    """The ConfigMap's prometheus.yml and alerts.yml, written out as Prometheus mounts them, pass promtool."""
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package prometheus)")
    data = by_kind("prometheus.yaml", "ConfigMap")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    assert "gradfleet-coordinator:9095" in data["prometheus.yml"]
    result = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
