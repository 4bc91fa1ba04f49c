"""The generated protobuf and gRPC code under gradfleet/v1/ matches what protos/ generates now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = ROOT / "gradfleet" / "v1"
EXPECTED = {"coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py"}


def _generator():
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    """Regenerating from the .proto files gives the committed files byte for byte (else: make protos)."""
    _generator().generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "gradfleet" / "v1").iterdir()}
    assert set(fresh) == EXPECTED
    stale = [name for name, data in sorted(fresh.items()) if (GENERATED_DIR / name).read_bytes() != data]
    assert stale == [], f"stale generated files {stale}: run `make protos` and commit gradfleet/v1/"
