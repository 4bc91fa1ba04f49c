"""docker-compose.yml and deploy/Dockerfile: valid compose; every file, service and port they name exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import DEFAULT_METRICS_PORT, DEFAULT_PORT
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"coordinator", "ray-head", "ray-worker", "prometheus", "grafana", "secrets"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def check_jsonschema() -> str:
    tool = Path(sys.executable).parent / "check-jsonschema"
    require(tool.exists(), "check-jsonschema not installed (pip install -e '.[dev]')")
    return str(tool)


def validate(path: Path) -> list[subprocess.CompletedProcess]:
    """Run both validators on `path`: Debian's docker-compose 1.29 and the compose-spec JSON schema."""
    require(shutil.which("docker-compose") is not None, "docker-compose not installed (apt-get)")
    schema = [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)]
    legacy = ["docker-compose", "-f", str(path), "config", "-q"]
    return [
        subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT) for cmd in (legacy, schema)
    ]


def test_compose_file_passes_both_validators() -> None:
    """docker-compose config -q and check-jsonschema (compose spec) both accept docker-compose.yml."""
    for result in validate(COMPOSE):
        assert result.returncode == 0, result.args[0] + ": " + result.stdout + result.stderr


def test_validators_reject_a_misspelled_key(tmp_path) -> None:
    """Negative control: the same file with `command` misspelled fails both validators."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("    command: ray start --address", "    comand: ray start --address")
    )
    assert "comand:" in broken.read_text()
    for result in validate(broken):
        assert result.returncode != 0, result.args[0]


def test_compose_has_every_service_and_the_workers_scale() -> None:
    """Six services; ray-worker has no fixed name or host port, so --scale ray-worker=N works."""
    services = compose()["services"]
    assert set(services) == SERVICES
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert "ray-head:6379" in worker["command"]


def test_ports_agree_between_compose_prometheus_and_the_service() -> None:
    """The coordinator's gRPC and metrics ports, and Ray's metrics port, match what Prometheus scrapes."""
    services = compose()["services"]
    command = " ".join(services["coordinator"]["command"])
    assert f"--port {DEFAULT_PORT}" in command and f"--metrics-port {DEFAULT_METRICS_PORT}" in command
    assert f"{DEFAULT_PORT}:{DEFAULT_PORT}" in services["coordinator"]["ports"]
    assert "--metrics-export-port=8080" in services["ray-head"]["command"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for s in job["static_configs"] for t in s["targets"]}
    assert targets == {f"coordinator:{DEFAULT_METRICS_PORT}", "ray-head:8080"}
    datasources = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]


def test_prometheus_finds_every_scaled_ray_worker_by_dns() -> None:
    """Prometheus resolves the ray-worker service name (one A record per replica) and scrapes each on
    the port the workers export Ray's metrics on."""
    worker_command = compose()["services"]["ray-worker"]["command"]
    assert "--metrics-export-port=8080" in worker_command
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    ray_job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "ray")
    assert ray_job["dns_sd_configs"] == [
        {"names": ["ray-worker"], "type": "A", "port": 8080, "refresh_interval": "15s"}
    ]


def bind_mounts() -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount in the compose file."""
    mounts = []
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts.append((source, target))
    return mounts


def test_every_mounted_and_built_file_exists() -> None:
    """Bind-mount sources, the build context, the Dockerfile and its COPY sources are in the repository."""
    mounts = bind_mounts()
    assert len(mounts) == 4
    for source, _ in mounts:
        assert (ROOT / source).exists(), source
    build = compose()["x-gradfleet"]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    assert dockerfile.is_file()
    copies = re.findall(r"^COPY\s+(\S+)\s+\S+$", dockerfile.read_text(), flags=re.MULTILINE)
    assert copies
    for source in copies:
        assert (ROOT / build["context"] / source).exists(), source


@pytest.mark.parametrize("config_name", ["prometheus.yml", "alerts.yml"])
def test_prometheus_files_are_mounted_where_the_config_expects(config_name) -> None:
    """prometheus.yml and the rule file it names are both mounted into /etc/prometheus."""
    targets = {target for _, target in bind_mounts()}
    assert f"/etc/prometheus/{config_name}" in targets


def test_grafana_finds_the_dashboard_where_provisioning_looks() -> None:
    """The dashboard provider's path is where compose mounts deploy/grafana/dashboards."""
    provider = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "gradfleet.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert ("./deploy/grafana/dashboards", path) in bind_mounts()
    assert (ROOT / "deploy" / "grafana" / "dashboards" / "gradfleet.json").is_file()


def test_the_deployed_coordinator_requires_tls_and_tokens() -> None:
    """The compose coordinator serves TLS only and checks tokens, from secrets the one-shot service makes."""
    services = compose()["services"]
    command = " ".join(services["coordinator"]["command"])
    for flag in (
        "--tls-cert /secrets/server.pem",
        "--tls-key /secrets/server.key",
        "--tokens-file /secrets/tokens",
    ):
        assert flag in command
    assert services["coordinator"]["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert "make-secrets.sh" in " ".join(services["secrets"]["command"])
    assert (ROOT / "deploy" / "secrets" / "make-secrets.sh").exists()
