"""scripts/demo.sh (`make demo`) announces each gradfleet command as it runs it."""

from __future__ import annotations

import re

from tests.helpers import ROOT

DEMO = ROOT / "scripts" / "demo.sh"


def test_each_announced_gradfleet_command_is_the_one_that_runs() -> None:
    """Every `==> gradfleet ...` line is followed by that very command (quotes aside), and every
    gradfleet command but `serve` is announced: the demo once printed `submit ... --watch` and ran
    submit, then watch."""
    lines = DEMO.read_text().splitlines()
    pairs = []
    for i, line in enumerate(lines):
        if announced := re.match(r'echo "==> gradfleet (.*)"$', line.strip()):
            command = next(text for text in lines[i + 1 :] if '"$BIN/gradfleet"' in text)
            run = re.search(r'"\$BIN/gradfleet" ([^)>]*)', command)[1].replace('"', "").split()
            pairs.append((announced[1].split(), run))
    assert [said for said, _ in pairs] == [run for _, run in pairs]
    run_anywhere = re.findall(r'"\$BIN/gradfleet" (\w+)', DEMO.read_text())
    assert sorted(said[0] for said, _ in pairs) == sorted(c for c in run_anywhere if c != "serve")
