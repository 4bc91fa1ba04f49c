"""Regenerate the Python protobuf and gRPC code from protos/ with grpc_tools.protoc.

Usage: python protos/generate.py [OUT_DIR]   (default: the repository root)
The code lands in OUT_DIR/gradfleet/v1/, the package path its own imports expect.
"""

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTOS = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write coordinator_pb2.py, coordinator_pb2.pyi and coordinator_pb2_grpc.py under out_dir."""
    (out_dir / "gradfleet" / "v1").mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
