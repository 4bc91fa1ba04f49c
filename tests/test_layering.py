"""Imports point one way: service -> workers -> workers/nn, and client commands never load Ray.

The numpy-only rule for workers/nn itself is checked in tests/nn/test_imports.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "service" / "cli.py"
SERVER_ONLY_COMMANDS = {"_cmd_serve"}  # `gradfleet serve` may import Ray, inside its own function
# What service.runner's JobRunner is built from: its actors, their CPUs, its checkpoint writes, its
# fault handling and its scaling (and the parts those two share).
RUNNER_PARTS = (
    "service.job_actors",
    "service.worker_cpus",
    "service.checkpoint_writer",
    "service.job_faults",
    "service.job_scaling",
    "service.job_parts",
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a module of this repository, or None for anything else (stdlib, third party)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_imports(path: Path, skip_functions: frozenset[str] = frozenset(), root: Path = ROOT) -> set[str]:
    """Absolute names of every module `path` may import, wherever the import statement sits,
    except inside the top-level functions named in `skip_functions`; `from X import a` gives X and X.a."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in skip_functions]
    skipped_nodes = {id(inner) for fn in skipped for inner in ast.walk(fn)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped_nodes:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _absolute(module: str, level: int, package: str) -> str:
    if not level:
        return module
    parts = package.split(".")
    parent = ".".join(parts[: len(parts) - (level - 1)])
    return f"{parent}.{module}" if module else parent


def reachable_imports(
    start: Path, skip_functions: frozenset[str] = frozenset(), root: Path = ROOT
) -> set[str]:
    """Every module name reachable from `start` by following imports into this repository's modules
    (and the packages that contain them)."""
    seen_files: set[Path] = set()
    names: set[str] = set()
    pending = [(start, skip_functions)]
    while pending:
        path, skip = pending.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        for name in direct_imports(path, skip, root):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                prefix = ".".join(parts[:depth])
                found = module_file(prefix, root)
                if found is not None:
                    names.add(prefix)
                    pending.append((found, frozenset()))
            if module_file(parts[0], root) is None:
                names.add(name)
    return names


def _top_levels(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_workers_never_import_service() -> None:
    """No module of workers/ (nor anything it imports from this repository) imports service."""
    offending = {}
    for path in sorted((ROOT / "workers").rglob("*.py")):
        reached = reachable_imports(path)
        if "service" in _top_levels(reached):
            offending[str(path.relative_to(ROOT))] = sorted(n for n in reached if n.startswith("service"))
    assert offending == {}
    assert "workers.nn" in reachable_imports(ROOT / "workers" / "worker.py")  # the walk does follow imports


def test_client_commands_never_import_ray() -> None:
    """What service/cli.py imports, outside the `serve` command, never reaches Ray or the server."""
    reached = reachable_imports(CLI, frozenset(SERVER_ONLY_COMMANDS))
    assert "ray" not in _top_levels(reached)
    assert not {"service.server", "service.scheduler", "service.runner", *RUNNER_PARTS} & reached
    assert {"grpc", "service.client", "service.progress"} <= reached | _top_levels(reached)
    with_serve = reachable_imports(CLI)
    assert "ray" in _top_levels(with_serve)  # the serve command does import it, and the walk sees that


def test_runner_parts_never_import_the_runner() -> None:
    """The modules JobRunner is built from (and its record changes) never reach service.runner or above."""
    for part in (*RUNNER_PARTS, "service.job_changes"):
        reached = reachable_imports(module_file(part))
        assert not {"service.runner", "service.scheduler", "service.server"} & reached, part
    assert set(RUNNER_PARTS) <= reachable_imports(ROOT / "service" / "runner.py")


def test_checker_flags_an_import_hidden_in_a_helper_module(tmp_path: Path) -> None:
    """A Ray import two modules away, or inside a client command, is found; one inside serve is not."""
    pkg = tmp_path / "service"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("def f():\n    import ray\n")
    (pkg / "cli.py").write_text(
        "from service import helper\n\ndef _cmd_serve():\n    import grpc_server_only\n"
    )
    reached = reachable_imports(pkg / "cli.py", frozenset(SERVER_ONLY_COMMANDS), root=tmp_path)
    assert "ray" in reached
    assert "grpc_server_only" not in reached
