"""The `gradfleet` command: run the coordinator, submit and follow jobs, fetch data.

This module holds what each command does and `main`, which parses the arguments (the parser is
in service/cli_parser.py), runs the command and turns errors into one line and an exit code;
following a job's events is in service/cli_watch.py. Client commands import neither Ray nor the
server; `serve` imports them when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from gradfleet.v1 import coordinator_pb2 as pb
from service import progress
from service.cli_connect import UsageError, connect, format_rpc_error, uses_tls
from service.cli_parser import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOB_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    SERVE_OPTIONS,
    build_parser,
)
from service.cli_watch import Renderer, WatchLost, reconnect_delays, watch_job
from service.client import CoordinatorClient, DownloadError
from service.errors import GradfleetError
from service.spec import load_spec_file
from service.wording import idle_workers_note


def exit_code_for_state(state: int) -> int:
    """The process exit code for a watched job that ended in `state`."""
    return {
        pb.SUCCEEDED: EXIT_OK,
        pb.FAILED: EXIT_JOB_FAILED,
        pb.CANCELLED: EXIT_JOB_CANCELLED,
    }.get(state, EXIT_ERROR)


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.config import config_from_env_and_flags
    from service.server import serve  # imports Ray: only here

    flags = {name: getattr(args, name) for name in SERVE_OPTIONS}  # None: not given
    try:
        serve(config_from_env_and_flags(flags))
    except ValueError as exc:  # conflicting flags, a malformed token file
        return _fail(f"error: {exc}")
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.file, overrides=args.set)
    if args.request_id:
        spec.request_id = args.request_id
    with connect(args) as client:
        job, created = client.submit_with_status(spec)
        if not args.watch:
            _print_job(job, args.output, submitted=True, earlier=not created)
            return EXIT_OK
        if args.output == "text":
            print(_submitted_line(job, not created, state=False), flush=True)
        return _follow(client, job.id, args.output, args.reconnect_s)


def _submitted_line(job: pb.Job, earlier: bool, *, state: bool) -> str:
    """`submitted job ID (NAME)[, STATE[: MESSAGE]]`, or, for a repeated request id, which job it
    already made. The message of a new job says what it waits for, and what defaults it got."""
    name, state_name = progress.printable(job.spec.name), progress.state_name(job.state)
    if not earlier:
        message = f": {job.message}" if job.message else ""
        return f"submitted job {job.id} ({name})" + (f", {state_name}{message}" if state else "")
    when = f", created {progress.format_time(job.created_at)}" if job.HasField("created_at") else ""
    now = f", now {state_name}" if state else ""
    request_id = progress.printable(job.spec.request_id)
    return (
        f"request id {request_id} was already submitted as job {job.id} ({name}){when}{now}; "
        "no new job was queued"
    )


def _cmd_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _print_job(client.get(args.job_id), args.output)
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        jobs = client.list(state=args.state)
    if args.output == "json":
        # {"jobs": [...]}, also when empty: protobuf's printer leaves out an empty repeated field.
        data = json_format.MessageToDict(pb.ListJobsResponse(jobs=jobs))
        print(json.dumps({"jobs": [], **data}, indent=2))
    else:
        print(progress.format_job_table(jobs) if jobs else "no jobs")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return _follow(client, args.job_id, "text", args.reconnect_s)


def _cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        before = client.get(args.job_id).state  # a cancel of an ended job returns it unchanged
        job = client.cancel(args.job_id)
    if job.state in (pb.QUEUED, pb.RUNNING):  # cancellation is asynchronous: workers stop in seconds
        print(f"cancel requested: job {job.id} is {pb.JobState.Name(job.state)} and stops within seconds")
    elif job.state == pb.CANCELLED and before in (pb.QUEUED, pb.RUNNING):  # this cancel ended it
        print(progress.format_event(pb.JobEvent(kind=pb.JobEvent.STATE, job=job)))
    else:
        print(f"job {job.id} had already ended: {pb.JobState.Name(job.state)}; nothing to cancel")
    return EXIT_OK


def _cmd_scale(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.scale(args.job_id, args.num_workers)
    # The runner switches at the first step boundary it acts on, after the current train call.
    when = "within about a second, at a step boundary" if job.state == pb.RUNNING else "when it starts"
    workers = f"{args.num_workers} worker" + ("" if args.num_workers == 1 else "s")
    print(f"job {job.id} ({pb.JobState.Name(job.state)}) runs with {workers} {when}")
    spec = job.spec
    if idle := idle_workers_note(args.num_workers, spec.micro_shards, spec.batch_size):
        print(f"note: {idle}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    to_stdout = args.path == "-"
    path = Path(args.path or ".")
    folder = path.is_dir() or (args.path or "").endswith(("/", os.sep))  # `-o DIR/`: always a folder
    if folder:
        path /= f"{args.job_id}.npz"
    if to_stdout and sys.stdout is None:  # started with standard output closed (`>&-`)
        raise UsageError("-o -: standard output is closed; redirect it to a file, or give -o PATH")
    with connect(args) as client:
        job = client.get(args.job_id)  # before the download: a job that ends meanwhile is still a checkpoint
        if folder:
            _make_folder(path.parent, args.path)
        if to_stdout:
            size = client.download_to(args.job_id, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            size = client.download(args.job_id, path)
    what = "the final model"
    if job.state in (pb.FAILED, pb.CANCELLED):
        what = f"the job's last checkpoint (the job ended {pb.JobState.Name(job.state)})"
    elif job.state != pb.SUCCEEDED:
        what = f"the job's latest checkpoint (the job was {pb.JobState.Name(job.state)}, not yet SUCCEEDED)"
    # With -o - standard output holds the model: the note goes to stderr.
    where = "standard output" if to_stdout else path
    print(f"wrote {size:,} bytes to {where}: {what}", file=sys.stderr if to_stdout else sys.stdout)
    return EXIT_OK


def _make_folder(folder: Path, flag_value: str | None) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"-o {flag_value}: {folder} exists and is not a folder") from None


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from service import fetch

    source = args.source_dir
    # The system copy stands in for the default mirror only: an explicit --base-url is downloaded from.
    if source is None and args.base_url is None and fetch.SYSTEM_COPY.is_dir():
        source = fetch.SYSTEM_COPY
    base_url = args.base_url or fetch.DEFAULT_BASE_URL
    show = _FetchProgress(sys.stdout)
    try:
        # An explicit --source-dir is the only source unless a --base-url is given too: a missing
        # or incomplete folder is an error, never a silent download from the official mirror.
        download = args.source_dir is None or args.base_url is not None
        dest = fetch.fetch_fashion_mnist(
            args.dest, base_url, source_dir=source, progress=show, download=download
        )
    except fetch.FetchError as exc:
        return _fail(f"error: {exc}")
    print(f"Fashion-MNIST is in {dest}")
    return EXIT_OK


class _FetchProgress:
    """Fetch progress: a redrawn line on a terminal, one line per finished file otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty = out, out.isatty()

    def __call__(self, name: str, done: int, total: int) -> None:
        size = f"{_size(done)} of {_size(total)}" if total >= 0 else _size(done)
        if self.tty:
            end = "\n" if done == total else ""
            self.out.write(f"\r{name} {size}{end}")
            self.out.flush()
        elif done == total:
            print(f"{name} {size}", file=self.out, flush=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _print_job(job: pb.Job, output: str, *, submitted: bool = False, earlier: bool = False) -> None:
    if output == "json":
        print(json_format.MessageToJson(job))
    elif submitted:
        print(_submitted_line(job, earlier, state=True))
        print(f"follow it with: gradfleet watch {job.id}")
    else:
        print(progress.format_job(job))


def _follow(client: CoordinatorClient, job_id: str, output: str, reconnect_s: float) -> int:
    """Watch to the end, print the summary (or the final Job as JSON); exit code by state."""
    show = output == "text"
    renderer = Renderer(sys.stdout, tty=sys.stdout.isatty()) if show else None
    try:
        job = watch_job(client, job_id, renderer, delays=reconnect_delays(reconnect_s))
    except KeyboardInterrupt:
        if renderer:
            renderer.end_line()
        print(f"stopped watching; job {job_id} keeps running", file=sys.stderr)
        print(f"(`gradfleet cancel {job_id}` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(progress.format_summary(job) if show else json_format.MessageToJson(job))
    return exit_code_for_state(job.state)


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see cli_parser.EXIT_CODES_HELP)."""
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _commands()[args.command](args)
    except grpc.RpcError as exc:
        client_cert = bool(getattr(args, "cert", None))
        return _fail(
            format_rpc_error(exc, getattr(args, "server", ""), tls=uses_tls(args), client_cert=client_cert)
        )
    except UsageError as exc:  # a bad option value, before anything was sent
        return _fail(f"error: {exc}")
    except GradfleetError as exc:  # an invalid job file, before anything is sent
        return _fail(f"error: {exc.message}")
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as Unix tools do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (WatchLost, DownloadError, OSError) as exc:
        return _fail(f"error: {exc}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """The function of each subcommand; looked up per call, so a command replaced at run time is used."""
    return {
        "serve": _cmd_serve,
        "submit": _cmd_submit,
        "get": _cmd_get,
        "list": _cmd_list,
        "watch": _cmd_watch,
        "cancel": _cmd_cancel,
        "scale": _cmd_scale,
        "download": _cmd_download,
        "fetch-data": _cmd_fetch_data,
    }


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush cannot complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
