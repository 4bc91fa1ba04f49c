"""bench/engine.py's allocation check, run as a test: its verdicts are claims the README makes."""

from __future__ import annotations

from bench.engine import allocation_check


def test_steady_state_steps_allocate_no_parameter_sized_array(capsys) -> None:
    """Both the engine's step and the parameter server's step loop over in-process workers keep
    their peak traced allocation under a quarter of the parameter vector."""
    allocation_check(batch=64, steps=10)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("allocation")]
    assert len(lines) == 2
    assert all(line.endswith(": OK") for line in lines), lines
