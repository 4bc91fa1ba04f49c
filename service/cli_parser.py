"""The `gradfleet` command line: its argument parser, the checks of option values, the exit codes.

`build_parser` defines every subcommand and option (defaults that come from the environment
included); the exit codes live here too, next to the help text that documents them. What each
command does is in service/cli.py, which picks the command by `args.command`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

from gradfleet.v1 import coordinator_pb2 as pb
from service.cli_watch import RECONNECT_WINDOW_S
from service.client import DEFAULT_ADDRESS
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
    DEFAULT_NPZ_CHECK_BYTES,
    DEFAULT_PORT,
    DEFAULT_RPC_THREADS,
    DEFAULT_STATE_DIR,
    TOKENS_FILE_ENV,
)

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

MAX_RECONNECT_WINDOW_S = 86_400.0  # a day; --reconnect-s beyond it is a usage error


def _reconnect_window(text: str) -> float:
    """--reconnect-s: finite seconds from 0 to a day (inf would retry, and allocate, forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_RECONNECT_WINDOW_S:
        raise argparse.ArgumentTypeError(f"got {text}; must be between 0 and {MAX_RECONNECT_WINDOW_S:g} s")
    return value


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

    parser = _TopLevelParser(
        prog="gradfleet",
        description="Distributed neural-network training: coordinator and client.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No abbreviated options: `--token SECRET` must not quietly mean `--token-file SECRET`.
    exact = functools.partial(argparse.ArgumentParser, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=exact)
    _add_serve(sub, common)
    _add_client_commands(sub, client, output)
    _add_fetch_data(sub, common)
    parser.commands = sub.choices
    return parser


class _TopLevelParser(argparse.ArgumentParser):
    """Reports arguments a command does not take with that command's usage: argparse alone prints
    the top level's (`usage: gradfleet [-h] COMMAND ...`), which does not say what the command takes."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.commands.get(parsed.command, self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _version() -> str:
    try:
        return importlib.metadata.version("gradfleet")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


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
    (
        "--npz-check-bytes",
        "bytes of each npz (or float IDX) feature array checked for NaN/inf at submit, the rest at load "
        f"(default {DEFAULT_NPZ_CHECK_BYTES:,})",
    ),
    ("--max-message-bytes", f"gRPC message size, both ways (default {DEFAULT_MAX_MESSAGE_BYTES:,})"),
    (
        "--max-watch-streams",
        "open streams in all, WatchJob, DownloadModel and Health/Watch together (each holds an RPC "
        f"thread; below --rpc-threads) (default {DEFAULT_MAX_WATCH_STREAMS})",
    ),
    (
        "--max-watch-streams-per-client",
        f"open streams of every kind per connection (default {DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT})",
    ),
    ("--rpc-threads", f"threads serving calls (default {DEFAULT_RPC_THREADS})"),
)


def _add_serve_limits(p: argparse.ArgumentParser) -> None:
    for flag, text in _SERVE_LIMITS:
        p.add_argument(flag, type=int, metavar="N", help=text)


# The names of serve's own options in the parsed arguments, for config_from_env_and_flags.
SERVE_OPTIONS = (
    *("host", "port", "metrics_port", "ray_address", "data_root", "state_dir", "max_running_jobs"),
    *(flag[2:].replace("-", "_") for flag, _ in _SERVE_LIMITS),
    *("tls_cert", "tls_key", "tls_client_ca", "tokens_file"),
)


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
    p.add_argument(
        "--cert",
        metavar="PEM",
        default=environ.get("GRADFLEET_CERT"),
        help="client certificate, for servers that require one (env GRADFLEET_CERT)",
    )
    p.add_argument(
        "--key",
        metavar="PEM",
        default=environ.get("GRADFLEET_KEY"),
        help="private key of --cert (env GRADFLEET_KEY)",
    )
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
        help="override a field, e.g. --set epochs=3 --set optimizer.learning_rate=0.01; list items by "
        "index, --set 'layers[0].units=32' or --set layers.0.units=32",
    )
    p = sub.add_parser("get", parents=[client, output], help="show one job")
    p.add_argument("job_id", metavar="JOB_ID")
    p = sub.add_parser("list", parents=[client, output], help="list jobs, newest first")
    states = [v.name for v in pb.JobState.DESCRIPTOR.values if v.number != 0]
    p.add_argument("--state", type=str.upper, choices=states, help="only jobs in this state")
    p = sub.add_parser("watch", parents=[client, follow], help="follow a job until it ends", **_exits)
    p.add_argument("job_id", metavar="JOB_ID")
    p = sub.add_parser("cancel", parents=[client], help="stop a queued or running job")
    p.add_argument("job_id", metavar="JOB_ID")
    p = sub.add_parser("scale", parents=[client], help="change a job's worker count (same results)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "num_workers", metavar="N", type=_worker_count, help="worker actors, from a step boundary soon after"
    )
    p = sub.add_parser("download", parents=[client], help="save a trained model (.npz)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument(
        "-o",
        "--output-file",
        dest="path",
        help="file or folder to write to (a trailing / makes it a folder, created if missing; "
        "a folder gets JOB_ID.npz), - for standard output (default JOB_ID.npz)",
    )


def _add_fetch_data(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch-data", parents=[common], help="download Fashion-MNIST, verified")
    default_dest = DEFAULT_DATA_ROOT / "fashion-mnist"
    p.add_argument("--dest", type=Path, default=default_dest, help=f"default {default_dest}")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="mirror to download from (default: the official one, or the system copy if any)",
    )
    p.add_argument(
        "--source-dir",
        type=Path,
        metavar="DIR",
        help="copy the files from here; a missing file is an error unless --base-url is also given "
        "(default: the system copy if any, downloading what it lacks)",
    )
