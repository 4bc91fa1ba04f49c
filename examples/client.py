"""The Python client in a few lines: submit a job file, follow its evaluations, download the model.

    python examples/client.py examples/quick.yaml [--server 127.0.0.1:50051] [--set epochs=1] [-o model.npz]

Run from the repository root with the project installed (`make setup`; `.venv/bin/python ...`).
For TLS and tokens pass `tls=TlsOptions(ca=...)` and `token=...` to CoordinatorClient.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient, DownloadError
from service.errors import GradfleetError
from service.spec import load_spec_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/client.py")
    parser.add_argument("job_file")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--output", help="where to write the model (default JOB_ID.npz)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as exc:  # the status says what is wrong; INVALID_ARGUMENT names the field
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    except (GradfleetError, DownloadError, OSError) as exc:  # a bad job file, --set or -o
        print(f"error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.job_file, overrides=args.set)  # InvalidSpec names the field at fault
    with CoordinatorClient(args.server) as client:
        job = client.submit(spec)
        print(f"submitted job {job.id}")
        for event in client.watch(job.id):  # ends when the job does
            if event.kind == pb.JobEvent.EVAL:
                progress = event.job.progress
                print(f"epoch {progress.epoch}: test accuracy {progress.eval_accuracy:.4f}")
        job = client.get(job.id)
        print(f"job {job.id} {pb.JobState.Name(job.state)} {job.message}".rstrip())
        if job.state != pb.SUCCEEDED:
            return 1
        path = args.output or f"{job.id}.npz"
        print(f"model: {path} ({client.download(job.id, path):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
