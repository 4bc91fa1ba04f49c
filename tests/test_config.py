"""Server configuration knobs added for monitoring and cluster scheduling, read from the environment."""

from __future__ import annotations

import pytest

from service.config import DEFAULT_METRICS_RETIRE_AFTER_S, DEFAULT_WORKER_WAIT_S, config_from_env_and_flags


def test_defaults_when_nothing_is_set() -> None:
    """No flags and no environment: series retire after 60 s, jobs wait 600 s, no autoscaler assumed."""
    config = config_from_env_and_flags({}, environ={})
    assert config.metrics_retire_after_s == DEFAULT_METRICS_RETIRE_AFTER_S == 60.0
    assert config.worker_wait_s == DEFAULT_WORKER_WAIT_S == 600.0
    assert config.autoscaling is False


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("1", True), ("false", False), ("no", False)])
def test_autoscaling_flag_reads_common_spellings(text, expected) -> None:
    """GRADFLEET_AUTOSCALING accepts true/1 and false/no."""
    assert config_from_env_and_flags({}, environ={"GRADFLEET_AUTOSCALING": text}).autoscaling is expected


def test_numeric_knobs_come_from_the_environment() -> None:
    """GRADFLEET_METRICS_RETIRE_AFTER_S and GRADFLEET_WORKER_WAIT_S are read as seconds."""
    environ = {"GRADFLEET_METRICS_RETIRE_AFTER_S": "5", "GRADFLEET_WORKER_WAIT_S": "30.5"}
    config = config_from_env_and_flags({}, environ=environ)
    assert (config.metrics_retire_after_s, config.worker_wait_s) == (5.0, 30.5)


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ({"port": 99999}, "--port: got 99999; must be between 0 and 65535"),
        ({"port": -1}, "--port: got -1; must be between 0 and 65535"),
        ({"metrics_port": 70000}, "--metrics-port: got 70000; must be between -1 and 65535"),
        ({"metrics_port": -2}, "--metrics-port: got -2; must be between -1 and 65535"),
    ],
    ids=["port-high", "port-negative", "metrics-high", "metrics-below-off"],
)
def test_ports_outside_their_range_are_refused(flags, error) -> None:
    """A port above 65535 (or below 0; -1 turns metrics off) is a usage error naming the flag."""
    with pytest.raises(ValueError, match=error):
        config_from_env_and_flags(flags, environ={})


def test_metrics_can_be_turned_off_and_ports_left_to_the_system() -> None:
    """Port 0 and metrics port -1 are accepted."""
    config = config_from_env_and_flags({"port": 0, "metrics_port": -1}, environ={})
    assert (config.port, config.metrics_port) == (0, -1)
