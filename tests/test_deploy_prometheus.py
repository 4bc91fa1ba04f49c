"""deploy/prometheus: the scrape configuration and alert rules pass promtool; the alerts' unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package prometheus)")
    return subprocess.run(["promtool", *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")],
    ids=["config", "rules"],
)
def test_promtool_accepts_the_file(args) -> None:
    """promtool check config / check rules reports success."""
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    """promtool test rules runs alerts_test.yml: each alert fires on its case and not on healthy series."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    """Each alert named in alerts.yml appears in at least one alert_rule_test."""
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert len(alerts) == 7
    assert alerts == tested
