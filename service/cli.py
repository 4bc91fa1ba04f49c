"""The `gradfleet` command: run the coordinator, submit and follow jobs, fetch data.

Client commands import neither Ray nor the server; `serve` imports them when it runs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from gradfleet.v1 import coordinator_pb2 as pb
from service import progress
from service.client import DEFAULT_ADDRESS, CoordinatorClient, DownloadError, TlsOptions
from service.config import (
    DEFAULT_CSV_CHECK_BYTES,
    DEFAULT_DATA_ROOT,
    DEFAULT_HOST,
    DEFAULT_MAX_DATASET_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PARAMS,
    DEFAULT_MAX_QUEUED_JOBS,
    DEFAULT_MAX_RUNNING_JOBS,
    DEFAULT_MAX_WATCH_STREAMS,
    DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT,
    DEFAULT_MAX_WORKERS_PER_JOB,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_RPC_THREADS,
    DEFAULT_STATE_DIR,
    TOKENS_FILE_ENV,
)
from service.errors import GradfleetError
from service.spec import load_spec_file

EXIT_OK = 0  # the command worked; for watch: the job SUCCEEDED
EXIT_JOB_FAILED = 1  # the watched job FAILED
EXIT_ERROR = 2  # usage error, bad job file, server error, or the server could not be reached
EXIT_JOB_CANCELLED = 3  # the watched job was CANCELLED
EXIT_INTERRUPTED = 130  # Ctrl-C (the job itself keeps running)
EXIT_BROKEN_PIPE = 141  # stdout was closed early (`| head`): 128 + SIGPIPE, as a shell reports

EXIT_CODES_HELP = """exit codes:
  0    success; for watch and submit --watch: the job SUCCEEDED
  1    the watched job FAILED
  2    usage error, invalid job file, error from the server, or server unreachable
  3    the watched job was CANCELLED
  130  interrupted (Ctrl-C); a watched job keeps running
  141  the output was closed early (e.g. piped to head)"""

# Codes a broken watch stream shows when the server restarts or the network drops.
_RECONNECT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
)
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0)  # then every 2 s: a restarted coordinator is found within 2 s
RECONNECT_WINDOW_S = 60.0  # a coordinator restart (Ray included) takes well under this


MAX_RECONNECT_WINDOW_S = 86_400.0  # a day; --reconnect-s beyond it is a usage error


def reconnect_delays(window_s: float) -> tuple[float, ...]:
    """Sleeps between reconnect attempts: the backoff, then its last value, adding up to `window_s`."""
    delays: list[float] = []
    total = 0.0
    while (left := window_s - total) > 0:
        delays.append(min(RECONNECT_BACKOFF_S[min(len(delays), len(RECONNECT_BACKOFF_S) - 1)], left))
        total += delays[-1]
    return tuple(delays)


def _reconnect_window(text: str) -> float:
    """--reconnect-s: finite seconds from 0 to a day (inf would retry, and allocate, forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_RECONNECT_WINDOW_S:
        raise argparse.ArgumentTypeError(f"got {text}; must be between 0 and {MAX_RECONNECT_WINDOW_S:g} s")
    return value


_LOG = logging.getLogger(__name__)


class WatchLost(Exception):
    """The watch stream broke and reconnecting did not help."""


def exit_code_for_state(state: int) -> int:
    """The process exit code for a watched job that ended in `state`."""
    return {
        pb.SUCCEEDED: EXIT_OK,
        pb.FAILED: EXIT_JOB_FAILED,
        pb.CANCELLED: EXIT_JOB_CANCELLED,
    }.get(state, EXIT_ERROR)


def format_rpc_error(exc: grpc.RpcError, address: str) -> str:
    """One line for stderr; an unreachable server gets the address tried and what to do."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"error: cannot reach the coordinator at {address} ({details}); "
            "start one with `gradfleet serve`, or point --server / GRADFLEET_SERVER at it"
        )
    return f"error: {code.name}: {details}"


# ---------------------------------------------------------------------------------------------
# Argument parsing


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; `environ` supplies the --server default (GRADFLEET_SERVER)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    server_default = environ.get("GRADFLEET_SERVER") or DEFAULT_ADDRESS
    client.add_argument(
        "--server",
        default=server_default,
        metavar="HOST:PORT",
        help=f"coordinator address (default {server_default}; env GRADFLEET_SERVER)",
    )
    _add_client_security(client, environ)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--output", "-O", choices=("text", "json"), default="text", help="default text")

    parser = argparse.ArgumentParser(
        prog="gradfleet",
        description="Distributed neural-network training: coordinator and client.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No abbreviated options: `--token SECRET` must not quietly mean `--token-file SECRET`.
    exact = functools.partial(argparse.ArgumentParser, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=exact)
    _add_serve(sub, common)
    _add_client_commands(sub, client, output)
    _add_fetch_data(sub, common)
    return parser


def _add_serve(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # Defaults stay None so config_from_env_and_flags can tell "not given" and use GRADFLEET_*.
    p = sub.add_parser("serve", parents=[common], help="run the coordinator until Ctrl-C")
    p.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"gRPC port, 0 = any free (default {DEFAULT_PORT})")
    p.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus port, -1 = off (default {DEFAULT_METRICS_PORT})",
    )
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default: local)")
    p.add_argument("--data-root", metavar="DIR", help=f"datasets (default {DEFAULT_DATA_ROOT})")
    p.add_argument("--state-dir", metavar="DIR", help=f"job records and models (default {DEFAULT_STATE_DIR})")
    p.add_argument(
        "--max-running-jobs",
        type=int,
        metavar="N",
        help=f"jobs trained at once (default {DEFAULT_MAX_RUNNING_JOBS})",
    )
    _add_serve_limits(p)
    _add_serve_security(p)
    p.set_defaults(func=_cmd_serve)


# (flag, help) of each limit; each flag also reads GRADFLEET_<NAME> from the environment.
_SERVE_LIMITS = (
    ("--max-queued-jobs", f"jobs waiting to run; more are refused (default {DEFAULT_MAX_QUEUED_JOBS})"),
    ("--max-workers-per-job", f"num_workers allowed in a spec (default {DEFAULT_MAX_WORKERS_PER_JOB})"),
    ("--max-params", f"parameters per model (default {DEFAULT_MAX_PARAMS:,})"),
    ("--max-dataset-bytes", f"dataset arrays in memory, bytes (default {DEFAULT_MAX_DATASET_BYTES:,})"),
    (
        "--csv-check-bytes",
        f"bytes of a CSV file parsed at submit, the rest at load (default {DEFAULT_CSV_CHECK_BYTES:,})",
    ),
    ("--max-message-bytes", f"gRPC message size, both ways (default {DEFAULT_MAX_MESSAGE_BYTES:,})"),
    ("--max-watch-streams", f"WatchJob streams in all (default {DEFAULT_MAX_WATCH_STREAMS})"),
    (
        "--max-watch-streams-per-client",
        f"WatchJob streams per connection (default {DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT})",
    ),
    ("--rpc-threads", f"threads serving calls (default {DEFAULT_RPC_THREADS})"),
)


def _add_serve_limits(p: argparse.ArgumentParser) -> None:
    for flag, text in _SERVE_LIMITS:
        p.add_argument(flag, type=int, metavar="N", help=text)


def _add_serve_security(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain; with --tls-key, serve TLS only")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA")
    p.add_argument(
        "--tokens-file",
        metavar="FILE",
        help=f"require bearer tokens, `token principal [admin]` per line (env {TOKENS_FILE_ENV})",
    )


def _add_client_security(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    p.add_argument("--tls", action="store_true", help="use TLS, trusting the system CAs (implied by --ca)")
    p.add_argument(
        "--ca", metavar="PEM", default=environ.get("GRADFLEET_CA"), help="CA to trust (env GRADFLEET_CA)"
    )
    p.add_argument("--cert", metavar="PEM", help="client certificate, for servers that require one")
    p.add_argument("--key", metavar="PEM", help="private key of --cert")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=environ.get("GRADFLEET_TOKEN_FILE"),
        help="file holding the bearer token (env GRADFLEET_TOKEN_FILE, or the token in GRADFLEET_TOKEN)",
    )
    p.add_argument("--token", nargs="?", action=_RefuseToken, help=argparse.SUPPRESS)
    p.set_defaults(env_token=environ.get("GRADFLEET_TOKEN") or None)


MAX_UINT32 = 2**32 - 1  # ScaleJobRequest.num_workers is a uint32; the server checks its own limit


def _worker_count(text: str) -> int:
    """A worker count for `scale`: a whole number of at least 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; the worker count must be at least 1")
    if value > MAX_UINT32:
        raise argparse.ArgumentTypeError(
            f"got {value}; more than any server allows (its --max-workers-per-job sets the limit)"
        )
    return value


class _RefuseToken(argparse.Action):
    """`--token` exists only to say why there is none (without repeating the token)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            "there is no --token option: a token on the command line is visible to every user of "
            "the machine (ps); put it in GRADFLEET_TOKEN or in a file for --token-file"
        )


def _add_client_commands(
    sub: argparse._SubParsersAction,
    client: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
) -> None:
    _exits = {"epilog": EXIT_CODES_HELP, "formatter_class": argparse.RawDescriptionHelpFormatter}
    follow = argparse.ArgumentParser(add_help=False)
    follow.add_argument(
        "--reconnect-s",
        type=_reconnect_window,
        default=RECONNECT_WINDOW_S,
        metavar="S",
        help=f"keep reconnecting a broken watch this long, seconds (default {RECONNECT_WINDOW_S:g})",
    )
    p = sub.add_parser("submit", parents=[client, output, follow], help="submit a job file", **_exits)
    p.add_argument("file", metavar="FILE", help="job spec, .yaml/.yml or .json")
    p.add_argument("--watch", "-w", action="store_true", help="follow the job until it ends")
    p.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key: submitting again with the same ID returns the same job "
        "(default: a fresh UUID, reused by automatic retries)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set epochs=3 --set optimizer.learning_rate=0.01",
    )
    p.set_defaults(func=_cmd_submit)
    p = sub.add_parser("get", parents=[client, output], help="show one job")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_cmd_get)
    p = sub.add_parser("list", parents=[client, output], help="list jobs, newest first")
    states = [v.name for v in pb.JobState.DESCRIPTOR.values if v.number != 0]
    p.add_argument("--state", type=str.upper, choices=states, help="only jobs in this state")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("watch", parents=[client, follow], help="follow a job until it ends", **_exits)
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_cmd_watch)
    p = sub.add_parser("cancel", parents=[client], help="stop a queued or running job")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_cmd_cancel)
    p = sub.add_parser("scale", parents=[client], help="change a job's worker count (same results)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("num_workers", metavar="N", type=_worker_count, help="worker actors from the next step on")
    p.set_defaults(func=_cmd_scale)
    p = sub.add_parser("download", parents=[client], help="save a trained model (.npz)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "-o",
        "--output-file",
        dest="path",
        help="file or existing folder to write to, - for standard output (default JOB_ID.npz)",
    )
    p.set_defaults(func=_cmd_download)


def _add_fetch_data(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch-data", parents=[common], help="download Fashion-MNIST, verified")
    default_dest = DEFAULT_DATA_ROOT / "fashion-mnist"
    p.add_argument("--dest", type=Path, default=default_dest, help=f"default {default_dest}")
    p.add_argument("--base-url", metavar="URL", help="mirror to download from (default: the official one)")
    p.add_argument(
        "--source-dir",
        type=Path,
        metavar="DIR",
        help="copy files found here instead of downloading (default: the system copy if any)",
    )
    p.set_defaults(func=_cmd_fetch_data)


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.config import config_from_env_and_flags
    from service.server import serve  # imports Ray: only here

    names = ("host", "port", "metrics_port", "ray_address", "data_root", "state_dir", "max_running_jobs")
    names += tuple(flag[2:].replace("-", "_") for flag, _ in _SERVE_LIMITS)
    names += ("tls_cert", "tls_key", "tls_client_ca", "tokens_file")
    flags = {name: getattr(args, name) for name in names}  # None: not given
    try:
        serve(config_from_env_and_flags(flags))
    except ValueError as exc:  # conflicting flags, a malformed token file
        return _fail(f"error: {exc}")
    return EXIT_OK


def _connect(args: argparse.Namespace) -> CoordinatorClient:
    """A client for --server with the TLS and token options of the command line and environment."""
    tls = None
    if args.tls or args.ca or args.cert or args.key:
        tls = TlsOptions(*(Path(p) if p else None for p in (args.ca, args.cert, args.key)))
    return CoordinatorClient(args.server, tls=tls, token=_read_token(args))


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise OSError(f"{args.token_file}: empty token file")
        return token
    return args.env_token


def _cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.file, overrides=args.set)
    if args.request_id:
        spec.request_id = args.request_id
    with _connect(args) as client:
        job = client.submit(spec)
        if not args.watch:
            _print_job(job, args.output, submitted=True)
            return EXIT_OK
        if args.output == "text":
            print(f"submitted job {job.id} ({progress.printable(job.spec.name)})", flush=True)
        return _follow(client, job.id, args.output, args.reconnect_s)


def _cmd_get(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        _print_job(client.get(args.job_id), args.output)
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        jobs = client.list(state=args.state)
    if args.output == "json":
        print(json_format.MessageToJson(pb.ListJobsResponse(jobs=jobs)))
    else:
        print(progress.format_job_table(jobs) if jobs else "no jobs")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        return _follow(client, args.job_id, "text", args.reconnect_s)


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.cancel(args.job_id)
    if job.state in (pb.QUEUED, pb.RUNNING):  # cancellation is asynchronous: workers stop in seconds
        print(f"cancel requested: job {job.id} is {pb.JobState.Name(job.state)} and stops within seconds")
    elif job.state == pb.CANCELLED:
        print(progress.format_event(pb.JobEvent(kind=pb.JobEvent.STATE, job=job)))
    else:
        print(f"job {job.id} had already ended: {pb.JobState.Name(job.state)}; nothing to cancel")
    return EXIT_OK


def _cmd_scale(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.scale(args.job_id, args.num_workers)
    when = "from its next step" if job.state == pb.RUNNING else "when it starts"
    workers = f"{args.num_workers} worker" + ("" if args.num_workers == 1 else "s")
    print(f"job {job.id} ({pb.JobState.Name(job.state)}) runs with {workers} {when}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    to_stdout = args.path == "-"
    path = Path(args.path or ".")
    if path.is_dir():
        path /= f"{args.job_id}.npz"
    with _connect(args) as client:
        job = client.get(args.job_id)  # before the download: a job that ends meanwhile is still a checkpoint
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


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from service import fetch

    source = args.source_dir
    if source is None and fetch.SYSTEM_COPY.is_dir():
        source = fetch.SYSTEM_COPY
    base_url = args.base_url or fetch.DEFAULT_BASE_URL
    show = _FetchProgress(sys.stdout)
    try:
        dest = fetch.fetch_fashion_mnist(args.dest, base_url, source_dir=source, progress=show)
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


def _print_job(job: pb.Job, output: str, *, submitted: bool = False) -> None:
    if output == "json":
        print(json_format.MessageToJson(job))
    elif submitted:
        name, state = progress.printable(job.spec.name), progress.state_name(job.state)
        print(f"submitted job {job.id} ({name}), {state}")
        print(f"follow it with: gradfleet watch {job.id}")
    else:
        print(progress.format_job(job))


# ---------------------------------------------------------------------------------------------
# Watching


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


def watch_job(
    client: CoordinatorClient,
    job_id: str,
    renderer: Renderer | None,
    *,
    delays: Sequence[float] = reconnect_delays(RECONNECT_WINDOW_S),
    sleep: Callable[[float], None] = time.sleep,
) -> pb.Job:
    """Follow `job_id` until a terminal state, reconnecting with backoff if the stream breaks (on a
    fresh channel each time, so gRPC's own growing reconnect backoff never delays finding the server).

    Returns the job as of its last event; raises WatchLost when every reconnect failed, and
    grpc.RpcError when the first connection fails or for errors reconnecting cannot fix.
    """
    last: pb.Job | None = None
    failures = 0
    while True:
        job, count, reason = _stream_once(client, job_id, renderer, connected=last is not None)
        last = job or last
        if last is not None and last.state in progress.TERMINAL_STATES:
            if renderer:
                renderer.end_line()
            return last
        if count > 1:  # the first event only restates the job: count later ones as progress
            failures = 0
        if failures == len(delays):
            raise WatchLost(
                f"lost the watch stream of job {job_id} ({reason}); gave up after {sum(delays):g} s "
                "of reconnecting (--reconnect-s sets how long)"
            )
        _LOG.debug("watch stream broke: %s", reason)
        if renderer:
            wait, left = delays[failures], sum(delays[failures:])
            renderer.note(
                f"connection lost ({reason}); reconnecting in {wait:g} s (trying for {left:g} s more)"
            )
        sleep(delays[failures])
        client.reconnect()
        failures += 1


def _stream_once(
    client: CoordinatorClient, job_id: str, renderer: Renderer | None, *, connected: bool
) -> tuple[pb.Job | None, int, str]:
    """Show one watch stream's events; returns (last job, event count, why the stream ended)."""
    job, count = None, 0
    try:
        for event in client.watch(job_id):
            job, count = event.job, count + 1
            if renderer:
                renderer.show(event)
    except grpc.RpcError as exc:
        if not (connected or count) or exc.code() not in _RECONNECT_CODES:
            raise  # never connected, or an error that reconnecting cannot fix
        return job, count, f"{exc.code().name}: {exc.details()}"
    return job, count, "the stream ended early"


class Renderer:
    """Writes watch events: on a TTY a progress bar redrawn in place, with STATE and EVAL
    events as lines above it; otherwise one line per event, PROGRESS at most every ~2 s."""

    def __init__(self, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.tty, self.clock = out, tty, clock
        self._throttle = progress.EventThrottle()
        self._bar_len = 0  # length of the bar line on screen; 0 = none drawn

    def show(self, event: pb.JobEvent) -> None:
        if event.kind == pb.JobEvent.STATE and event.job.state in progress.TERMINAL_STATES:
            return  # the summary line says it, with the message, right after
        if not self.tty:
            if self._throttle.should_print(event, self.clock()):
                self._line(progress.format_event(event))
            return
        if event.kind != pb.JobEvent.PROGRESS:
            self._line(progress.format_event(event))
        if event.job.state == pb.RUNNING and event.job.progress.total_steps:
            self._bar(progress.format_progress(event.job))

    def note(self, text: str) -> None:
        self._line(text)

    def end_line(self) -> None:
        if self._bar_len:
            self.out.write("\n")
            self.out.flush()
            self._bar_len = 0

    def _bar(self, text: str) -> None:
        self.out.write("\r" + text.ljust(self._bar_len))  # pad over a longer previous line
        self.out.flush()
        self._bar_len = max(len(text), 1)

    def _line(self, text: str) -> None:
        if self._bar_len:  # replace the bar with the line; the bar is redrawn by the next event
            self.out.write("\r" + " " * self._bar_len + "\r")
            self._bar_len = 0
        self.out.write(text + "\n")
        self.out.flush()


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see EXIT_CODES_HELP)."""
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        return _fail(format_rpc_error(exc, getattr(args, "server", "")))
    except GradfleetError as exc:  # an invalid job file, before anything is sent
        return _fail(f"error: {exc.message}")
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as Unix tools do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except (WatchLost, DownloadError, OSError) as exc:
        return _fail(f"error: {exc}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush cannot complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
