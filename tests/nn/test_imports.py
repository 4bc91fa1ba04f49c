"""The numpy engine depends on numpy and the standard library only."""

import ast
import sys
from pathlib import Path

import workers.nn

ENGINE_DIR = Path(workers.nn.__file__).parent
ALLOWED_THIRD_PARTY = {"numpy"}


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """(absolute module name or '.' for relative imports, line) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." if node.level else node.module or "", node.lineno))
    return found


def _is_allowed(module: str) -> bool:
    top_level = module.split(".")[0]
    return (
        module == "."
        or module.startswith("workers.nn")
        or top_level in ALLOWED_THIRD_PARTY
        or top_level in sys.stdlib_module_names
        or top_level == "__future__"
    )


def test_engine_imports_only_numpy_stdlib_and_itself() -> None:
    """Every import in workers/nn is numpy, the standard library, or workers.nn itself."""
    imports = {path.name: _imported_modules(path) for path in sorted(ENGINE_DIR.glob("*.py"))}
    offending = [
        f"{name}:{line} imports {module}"
        for name, modules in imports.items()
        for module, line in modules
        if not _is_allowed(module)
    ]
    assert offending == []
    assert any(module == "numpy" for module, _ in imports["network.py"])


def test_import_check_catches_a_foreign_import(tmp_path: Path) -> None:
    """The checker flags ray and grpc, so the test above can fail."""
    source = tmp_path / "bad.py"
    source.write_text("import ray\nfrom grpc import server\nimport os\n")
    flagged = [module for module, _ in _imported_modules(source) if not _is_allowed(module)]
    assert flagged == ["ray", "grpc"]
