"""The CLI without a server: rendering, argument parsing, exit codes, and the watch loop."""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gradfleet.v1 import coordinator_pb2 as pb
from service import cli, cli_parser, cli_watch, progress
from service.client import DEFAULT_ADDRESS, DownloadError, write_chunks

ROOT = Path(__file__).resolve().parent.parent


def _job(state: int = pb.RUNNING, **progress_fields: object) -> pb.Job:
    return pb.Job(
        id="abc",
        spec=pb.JobSpec(name="mlp", epochs=10),
        state=state,
        progress=pb.Progress(**progress_fields),
    )


def _stamp(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=round(seconds % 1 * 1e9))


def _event(kind: int, job: pb.Job) -> pb.JobEvent:
    return pb.JobEvent(kind=kind, job=job)


RUNNING = dict(
    epoch=3,
    step=700,
    total_steps=2350,
    loss=0.34121,
    samples_per_second=123456,
    has_eval=True,
    eval_accuracy=0.87123,
    eval_loss=0.35,
    learning_rate=0.00098,
)


# ---------------------------------------------------------------------------------------------
# progress.py


@pytest.mark.parametrize(
    ("fraction", "bar"),
    [
        (0.0, "[----------]"),
        (0.5, "[#####-----]"),
        (0.999, "[#########-]"),
        (1.0, "[##########]"),
        (1.7, "[##########]"),
        (-1.0, "[----------]"),
    ],
)
def test_progress_bar_fills_in_proportion(fraction: float, bar: str) -> None:
    """The bar has one # per tenth completed, rounded down and clamped to [0, 1]."""
    assert progress.progress_bar(fraction) == bar


def test_progress_line_shows_epoch_step_loss_throughput_and_accuracy() -> None:
    """A running job renders as one line with all its progress figures."""
    assert progress.format_progress(_job(**RUNNING)) == (
        "epoch 3/10 [##--------]  29% step 700/2350 loss 0.3412 123,000 samples/s eval acc 0.8712"
    )


def test_progress_line_before_training_omits_unknown_figures() -> None:
    """Before the first step there is no loss, throughput or accuracy to show."""
    assert progress.format_progress(_job()) == "epoch 1/10 [----------]   0% step 0/?"


def test_summary_of_a_succeeded_job() -> None:
    """A succeeded job's summary gives its run time, test accuracy and test loss."""
    job = _job(pb.SUCCEEDED, **RUNNING)
    job.started_at.CopyFrom(_stamp(1000.0))
    job.finished_at.CopyFrom(_stamp(1041.25))
    job.progress.eval_loss = 0.30121
    assert progress.format_summary(job) == ("job abc SUCCEEDED in 41.2 s: test accuracy 0.8712, loss 0.3012")


def test_summary_of_a_failed_job_gives_the_reason() -> None:
    """A failed job's summary says how long it ran and why it failed."""
    job = _job(pb.FAILED)
    job.message = "loss became NaN at step 12; lower the learning rate"
    job.created_at.CopyFrom(_stamp(10.0))
    job.finished_at.CopyFrom(_stamp(13.0))
    assert progress.format_summary(job) == (
        "job abc FAILED after 3.0 s: loss became NaN at step 12; lower the learning rate"
    )


def test_summary_without_evaluation_or_times() -> None:
    """Without an evaluation the summary falls back to the training loss; no time if unknown."""
    assert progress.format_summary(_job(pb.SUCCEEDED, step=5, loss=0.5)) == (
        "job abc SUCCEEDED: training loss 0.5000"
    )


@pytest.mark.parametrize(
    ("kind", "job", "line"),
    [
        (pb.JobEvent.STATE, _job(pb.QUEUED), "job abc QUEUED"),
        (
            pb.JobEvent.STATE,
            pb.Job(id="abc", state=pb.CANCELLED, message="by user"),
            "job abc CANCELLED: by user",
        ),
        (
            pb.JobEvent.EVAL,
            _job(**RUNNING),
            "eval at epoch 3 step 700: accuracy 0.8712, loss 0.3500",
        ),
        (
            pb.JobEvent.PROGRESS,
            _job(epoch=1, step=1, total_steps=10, loss=2.5),
            "epoch 1/10 [#---------]  10% step 1/10 loss 2.5000",
        ),
    ],
    ids=["state", "state-with-message", "eval", "progress"],
)
def test_event_lines(kind: int, job: pb.Job, line: str) -> None:
    """Each event kind renders as one readable log line."""
    assert progress.format_event(_event(kind, job)) == line


def test_job_block_lists_the_fields_that_are_set() -> None:
    """`get` output shows id, state, progress, evaluation and times, each on its own line."""
    job = _job(**RUNNING)
    job.created_at.CopyFrom(_stamp(0))
    text = progress.format_job(job)
    assert text.splitlines() == [
        "id:         abc",
        "name:       mlp",
        "state:      RUNNING",
        "epoch:      3/10",
        "step:       700/2350 (29%)",
        "loss:       0.3412 (learning rate 0.00098)",
        "eval:       accuracy 0.8712, loss 0.3500",
        "throughput: 123,000 samples/s",
        "created:    1970-01-01 00:00:00 UTC",
    ]


@pytest.mark.parametrize(
    ("rate", "text"),
    [(35512, "35,500"), (123456, "123,000"), (1.5e9, "1,500,000,000"), (250, "250"), (12.54, "12.5")],
)
def test_throughput_reads_as_grouped_digits_not_an_exponent(rate: float, text: str) -> None:
    """Samples per second in three significant figures with grouped digits: 35,500, not 3.55e+04."""
    assert progress.format_rate(rate) == f"{text} samples/s"
    assert progress.format_progress(_job(samples_per_second=rate)).endswith(f" {text} samples/s")


@pytest.mark.parametrize(
    ("workers", "shards", "restarts", "row"),
    [
        (2, 1, 0, "workers: 2 (1 idle: micro_shards is 1)"),
        (4, 2, 3, "workers: 4 (2 idle: micro_shards is 2; 3 replaced after failures)"),
        (2, 2, 0, "workers: 2"),
        (2, 0, 0, "workers: 2"),  # a spec stored before defaults filled micro_shards
    ],
)
def test_job_block_says_how_many_workers_have_no_micro_shard(workers, shards, restarts, row) -> None:
    """`get` shows workers beyond micro_shards as idle: they hold a CPU and compute nothing."""
    job = _job(worker_restarts=restarts)
    job.spec.num_workers, job.spec.micro_shards = workers, shards
    assert row in [" ".join(line.split()) for line in progress.format_job(job).splitlines()]


def test_job_block_shows_top_k_and_regression_metrics_when_reported() -> None:
    """`get` adds a metrics line once an evaluation reported them: top-k accuracy for a classifier,
    the error measures (MSE, MAE, R^2) for a regression."""
    job = _job(**RUNNING)
    job.spec.eval_top_k = 3
    p = job.progress
    p.eval_top_k_accuracy, p.eval_mse, p.eval_mae, p.eval_r2 = 0.97, 0.0125, 0.08, 0.85

    def metrics_line(job: pb.Job) -> str:
        line = next(row for row in progress.format_job(job).splitlines() if row.startswith("metrics:"))
        return line.split(None, 1)[1]

    assert metrics_line(job) == "top-3 accuracy 0.9700"
    job.spec.loss = pb.HUBER
    assert metrics_line(job) == "MSE 0.0125, MAE 0.0800, R^2 0.8500"


def test_job_table_aligns_columns() -> None:
    """`list` output is a header and one aligned row per job."""
    jobs = [_job(**RUNNING), pb.Job(id="x", spec=pb.JobSpec(name="n"), state=pb.QUEUED)]
    assert progress.format_job_table(jobs).splitlines() == [
        "ID   NAME  STATE    EPOCH  STEP      LOSS    EVAL ACC  CREATED",
        "abc  mlp   RUNNING  3/10   700/2350  0.3412  0.8712    -",
        "x    n     QUEUED   0/?    0/?       -       -         -",
    ]


def test_names_with_control_characters_are_printed_escaped() -> None:
    """A name stored before SubmitJob refused control characters cannot colour or break the lines
    of `list`, `get` or `submit`: ESC, newline and NUL print as escapes."""
    job = pb.Job(id="x", spec=pb.JobSpec(name="a\x1b[31mRED\nline2\x00"), state=pb.QUEUED)
    escaped = "a\\x1b[31mRED\\nline2\\x00"
    assert progress.format_job_table([job]).splitlines()[1].split()[1] == escaped
    assert progress.format_job(job).splitlines()[1] == f"name:  {escaped}"
    assert progress.printable("résumé ✓") == "résumé ✓"


def test_throttle_passes_every_state_and_eval_event_but_few_progress_events() -> None:
    """Non-TTY output keeps STATE and EVAL events and PROGRESS at most every 2 s."""
    throttle = progress.EventThrottle(interval=2.0)
    job = _job()
    kinds_and_times = [
        (pb.JobEvent.STATE, 0.0),
        (pb.JobEvent.PROGRESS, 0.1),
        (pb.JobEvent.PROGRESS, 1.0),
        (pb.JobEvent.EVAL, 1.5),
        (pb.JobEvent.PROGRESS, 2.0),
        (pb.JobEvent.PROGRESS, 2.2),
        (pb.JobEvent.STATE, 2.3),
    ]
    shown = [throttle.should_print(_event(k, job), t) for k, t in kinds_and_times]
    assert shown == [True, True, False, True, False, True, True]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (41.25, "41.2 s"), (725, "12 min 5 s"), (7380, "2 h 3 min")],
)
def test_durations_are_readable(seconds: float, text: str) -> None:
    """Durations read as seconds, minutes or hours as fits."""
    assert progress.format_duration(seconds) == text


# ---------------------------------------------------------------------------------------------
# Argument parsing and exit codes


def _parse(*argv: str, environ: dict | None = None):
    return cli_parser.build_parser(environ or {}).parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve"], {"command": "serve", "host": None, "port": None, "metrics_port": None}),
        (
            [
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--ray-address",
                "auto",
                "--data-root",
                "d",
                "--state-dir",
                "s",
                "--max-running-jobs",
                "2",
                "-v",
            ],
            {
                "host": "0.0.0.0",
                "port": 0,
                "metrics_port": -1,
                "ray_address": "auto",
                "data_root": "d",
                "state_dir": "s",
                "max_running_jobs": 2,
                "verbose": True,
            },
        ),
        (
            [
                "submit",
                "job.yaml",
                "--watch",
                "--output",
                "json",
                "--set",
                "epochs=3",
                "--set",
                "seed=2",
            ],
            {
                "file": "job.yaml",
                "watch": True,
                "output": "json",
                "set": ["epochs=3", "seed=2"],
                "server": DEFAULT_ADDRESS,
            },
        ),
        (["submit", "job.yaml"], {"watch": False, "output": "text", "set": []}),
        (["get", "abc", "--output", "json"], {"job_id": "abc", "output": "json"}),
        (["list", "--state", "running"], {"state": "RUNNING", "output": "text"}),
        (["list"], {"state": None}),
        (["watch", "abc", "--server", "h:1"], {"job_id": "abc", "server": "h:1"}),
        (["cancel", "abc"], {"job_id": "abc"}),
        (["download", "abc", "-o", "model.npz"], {"job_id": "abc", "path": "model.npz"}),
        (["download", "abc"], {"path": None}),
        (
            ["fetch-data", "--dest", "d", "--base-url", "http://m/", "--source-dir", "s"],
            {"dest": Path("d"), "base_url": "http://m/", "source_dir": Path("s")},
        ),
        (["fetch-data"], {"dest": Path("data/fashion-mnist"), "base_url": None}),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_every_subcommand_parses(argv: list[str], expected: dict) -> None:
    """Each subcommand accepts its documented arguments."""
    args = vars(_parse(*argv))
    assert {key: args[key] for key in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["submit"],
        ["get"],
        ["watch"],
        ["cancel"],
        ["download"],
        ["list", "--state", "DONE"],
        ["get", "x", "--output", "yaml"],
        ["serve", "--port", "many"],
        ["watch", "j", "--reconnect-s", "inf"],
        ["watch", "j", "--reconnect-s", "-1"],
        ["frobnicate"],
    ],
    ids=lambda v: " ".join(v) or "nothing",
)
def test_missing_or_bad_arguments_are_usage_errors(argv: list[str], capsys) -> None:
    """A missing or malformed argument exits with status 2 and a usage message."""
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    assert "usage: gradfleet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "usage"),
    [(["list", "--bogus"], "usage: gradfleet list"), (["get", "a", "b"], "usage: gradfleet get")],
    ids=["unknown-flag", "extra-argument"],
)
def test_an_argument_a_command_does_not_take_shows_that_commands_usage(argv, usage, capsys) -> None:
    """Not the top level's `usage: gradfleet [-h] COMMAND ...`, which says nothing of the command."""
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(usage)
    assert f"error: unrecognized arguments: {argv[-1]}" in err


def test_version_prints_the_installed_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _parse("--version")
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradfleet {importlib.metadata.version('gradfleet')}"


def test_server_default_comes_from_the_environment() -> None:
    """GRADFLEET_SERVER sets the default address; --server still wins."""
    env = {"GRADFLEET_SERVER": "coord:7000"}
    assert _parse("get", "x", environ=env).server == "coord:7000"
    assert _parse("get", "x", "--server", "h:1", environ=env).server == "h:1"


@pytest.mark.parametrize(
    ("state", "code"),
    [(pb.SUCCEEDED, 0), (pb.FAILED, 1), (pb.CANCELLED, 3), (pb.RUNNING, 2), (pb.QUEUED, 2)],
    ids=["succeeded", "failed", "cancelled", "running", "queued"],
)
def test_exit_code_for_final_state(state: int, code: int) -> None:
    """Watching ends with 0 only for SUCCEEDED; 1 FAILED, 3 CANCELLED, 2 anything else."""
    assert cli.exit_code_for_state(state) == code


def test_exit_codes_are_documented_in_help(capsys) -> None:
    """--help lists every exit code the watch commands use."""
    with pytest.raises(SystemExit):
        _parse("watch", "--help")
    out = capsys.readouterr().out
    for line in (
        "0    success",
        "1    the watched job FAILED",
        "3    the watched job was CANCELLED",
    ):
        assert line in out


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_rpc_errors_are_one_line_with_the_code() -> None:
    """Server errors print as `error: CODE: details`; an unreachable server names the address."""
    not_found = _RpcError(grpc.StatusCode.NOT_FOUND, "job 'x' not found")
    assert cli.format_rpc_error(not_found, "h:1") == "error: NOT_FOUND: job 'x' not found"
    refused = cli.format_rpc_error(_RpcError(grpc.StatusCode.UNAVAILABLE, "refused"), "h:1")
    assert refused.startswith("error: cannot reach the coordinator at h:1 (refused)")
    assert "gradfleet serve" in refused


def test_main_reports_a_missing_job_file(capsys, tmp_path: Path) -> None:
    """A missing job file is a one-line error and exit status 2, before any connection."""
    assert cli.main(["submit", str(tmp_path / "job.yaml"), "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'job.yaml'}: no such file"


def test_main_reports_an_unreachable_server(capsys) -> None:
    """Connection refused prints the address tried and how to start a server, without traceback."""
    assert cli.main(["get", "abc", "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the coordinator at 127.0.0.1:1" in err and "Traceback" not in err


def test_serve_builds_config_from_flags(monkeypatch) -> None:
    """`serve` passes its flags through config_from_env_and_flags to service.server.serve."""
    seen = []
    fake = types.ModuleType("service.server")
    fake.serve = seen.append
    monkeypatch.setitem(sys.modules, "service.server", fake)
    for name in ("HOST", "PORT", "METRICS_PORT", "STATE_DIR", "MAX_RUNNING_JOBS"):
        monkeypatch.delenv(f"GRADFLEET_{name}", raising=False)
    assert cli.main(["serve", "--port", "0", "--max-running-jobs", "3", "--state-dir", "s"]) == 0
    config = seen[0]
    assert (config.port, config.max_running_jobs, config.state_dir) == (0, 3, Path("s"))
    assert (config.host, config.metrics_port) == ("127.0.0.1", 9095)


def test_client_commands_do_not_import_ray() -> None:
    """Importing the CLI loads neither Ray nor the server module."""
    code = "import sys, service.cli; print('ray' in sys.modules, 'service.server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# The watch loop, with a scripted client


class _ScriptedClient:
    """watch() plays one script per call: events, then optionally an RpcError."""

    def __init__(self, *scripts: tuple[list[pb.JobEvent], grpc.RpcError | None]) -> None:
        self.scripts = list(scripts)
        self.calls = self.reconnects = 0

    def reconnect(self) -> None:
        self.reconnects += 1

    def watch(self, job_id: str) -> Iterator[pb.JobEvent]:
        self.calls += 1
        events, error = self.scripts.pop(0)
        yield from events
        if error is not None:
            raise error


UNAVAILABLE = _RpcError(grpc.StatusCode.UNAVAILABLE, "socket closed")
STATE_RUNNING = _event(pb.JobEvent.STATE, _job(total_steps=10))
STEP_5 = _event(pb.JobEvent.PROGRESS, _job(epoch=1, step=5, total_steps=10, loss=1.0))
DONE = _event(pb.JobEvent.STATE, _job(pb.SUCCEEDED, epoch=1, step=10, total_steps=10, loss=0.5))


def test_watch_reconnects_after_a_broken_stream() -> None:
    """A stream broken mid-job is reopened after a backoff, and the final job is returned."""
    client = _ScriptedClient(([STATE_RUNNING, STEP_5], UNAVAILABLE), ([STATE_RUNNING, DONE], None))
    slept: list[float] = []
    out = io.StringIO()
    job = cli_watch.watch_job(client, "abc", cli_watch.Renderer(out, tty=False), sleep=slept.append)
    assert (job.state, client.calls, client.reconnects, slept) == (pb.SUCCEEDED, 2, 1, [0.5])
    assert "connection lost (UNAVAILABLE: socket closed); reconnecting in 0.5 s (trying for 60 s more)" in (
        out.getvalue()
    )


def test_reconnect_delays_back_off_to_2_s_and_fill_the_window() -> None:
    """Reconnect attempts wait 0.5, 1 and then 2 s each, until the window (default 60 s) is used."""
    assert cli_watch.reconnect_delays(6) == (0.5, 1.0, 2.0, 2.0, 0.5)
    default = cli_watch.reconnect_delays(cli_watch.RECONNECT_WINDOW_S)
    assert sum(default) == 60 and max(default) == 2.0


def test_watch_gives_up_after_the_last_backoff() -> None:
    """When every reconnect fails, watch_job raises WatchLost after sleeping each delay once."""
    client = _ScriptedClient(*[([STATE_RUNNING], UNAVAILABLE)] * 4)
    slept: list[float] = []
    with pytest.raises(
        cli_watch.WatchLost, match=r"lost the watch stream of job abc .* gave up after 0\.7 s"
    ):
        cli_watch.watch_job(client, "abc", None, delays=(0.1, 0.2, 0.4), sleep=slept.append)
    assert (client.calls, slept) == (4, [0.1, 0.2, 0.4])


def test_watch_treats_an_early_end_of_stream_as_a_break() -> None:
    """A stream that ends before a terminal state is reopened, not taken as the end of the job."""
    client = _ScriptedClient(([STATE_RUNNING], None), ([DONE], None))
    job = cli_watch.watch_job(client, "abc", None, sleep=lambda s: None)
    assert (job.state, client.calls) == (pb.SUCCEEDED, 2)


@pytest.mark.parametrize(
    "script",
    [([], UNAVAILABLE), ([STATE_RUNNING], _RpcError(grpc.StatusCode.NOT_FOUND, "gone"))],
    ids=["never-connected", "not-found"],
)
def test_watch_does_not_retry_what_retrying_cannot_fix(script) -> None:
    """A first connection failure or a non-transient error is raised at once."""
    client = _ScriptedClient(script)
    with pytest.raises(grpc.RpcError):
        cli_watch.watch_job(client, "abc", None, sleep=lambda s: pytest.fail("must not sleep"))
    assert client.calls == 1


WATCH_LIMIT = _RpcError(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    "the server has 64 WatchJob streams open, its limit (--max-watch-streams); retry later or poll "
    "with GetJob",
)


class _PolledClient(_ScriptedClient):
    """A client whose watch() plays its scripts and whose get() answers from a list of jobs (or errors)."""

    def __init__(self, answers: list, *scripts) -> None:
        super().__init__(*scripts)
        self.answers = answers

    def get(self, job_id: str) -> pb.Job:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_watch_polls_get_job_when_the_server_has_no_stream_to_spare() -> None:
    """A WatchJob refused for the server's stream limit is not an error: the job is followed with
    GetJob once a second (said once), its changes shown as events, and the final job returned."""
    evaluated = _job(
        epoch=1, step=10, total_steps=10, loss=0.5, has_eval=True, eval_accuracy=0.9, eval_loss=0.4
    )
    answers = [_job(total_steps=10), STEP_5.job, STEP_5.job, UNAVAILABLE, evaluated, DONE.job]
    client = _PolledClient(answers, ([], WATCH_LIMIT))
    out, notices, slept = io.StringIO(), [], []
    job = cli_watch.watch_job(
        client,
        "abc",
        cli_watch.Renderer(out, tty=False, clock=lambda: 0.0),
        sleep=slept.append,
        notice=notices.append,
    )
    assert (job.state, client.calls, client.reconnects, client.answers) == (pb.SUCCEEDED, 1, 1, [])
    assert notices == [
        "following job abc by polling GetJob every 1 s: the server has no WatchJob stream to spare "
        f"({WATCH_LIMIT.details()})"
    ]
    assert slept == [1.0, 1.0, 1.0, 0.5, 1.0]
    assert out.getvalue().splitlines() == [
        "job abc RUNNING",
        "epoch 1/10 [#####-----]  50% step 5/10 loss 1.0000",
        "GetJob failed (UNAVAILABLE: socket closed); retrying in 0.5 s",
        "eval at epoch 1 step 10: accuracy 0.9000, loss 0.4000",
    ]  # the throttle keeps the second PROGRESS line back; the summary says SUCCEEDED


def test_polling_gives_up_like_a_broken_stream() -> None:
    """GetJob failing for the whole reconnect window ends the poll with WatchLost, as a stream would."""
    client = _PolledClient([UNAVAILABLE] * 3, ([], WATCH_LIMIT))
    with pytest.raises(
        cli_watch.WatchLost, match=r"lost job abc \(UNAVAILABLE: socket closed\); gave up after"
    ):
        cli_watch.watch_job(
            client, "abc", None, delays=(0.1, 0.2), sleep=lambda s: None, notice=lambda t: None
        )


@pytest.mark.parametrize(
    ("change", "kinds"),
    [
        ({}, []),
        ({"progress.step": 6}, [pb.JobEvent.PROGRESS]),
        ({"state": pb.SUCCEEDED}, [pb.JobEvent.STATE]),
        ({"message": "waiting for CPUs"}, [pb.JobEvent.STATE]),
        ({"progress.checkpoint_step": 5}, [pb.JobEvent.CHECKPOINT]),
        (
            {"progress.rollbacks": 1, "message": "rolled back", "progress.step": 3},
            [pb.JobEvent.ROLLBACK, pb.JobEvent.PROGRESS],
        ),
        ({"progress.worker_restarts": 1, "message": "replaced"}, [pb.JobEvent.RECOVERED]),
        ({"progress.has_eval": True, "progress.eval_accuracy": float("nan")}, [pb.JobEvent.EVAL]),
    ],
)
def test_polled_changes_become_the_events_a_stream_sends(change: dict, kinds: list[int]) -> None:
    """Two GetJob answers differ by the events a stream would have sent between them."""
    before = _job(epoch=1, step=5, total_steps=10, has_eval=False)
    after = pb.Job()
    after.CopyFrom(before)
    for path, value in change.items():
        target, _, field = path.rpartition(".")
        setattr(after.progress if target else after, field, value)
    assert [e.kind for e in cli_watch.events_between(before, after)] == kinds
    same_nan = pb.Job()
    same_nan.CopyFrom(after)
    assert cli_watch.events_between(after, same_nan) == []  # a NaN accuracy is not news twice


def test_non_tty_rendering_prints_lines_and_leaves_the_end_to_the_summary() -> None:
    """Off a terminal each shown event is a line; the final STATE is left to the summary."""
    times = iter([0.0, 0.5, 1.0])
    out = io.StringIO()
    renderer = cli_watch.Renderer(out, tty=False, clock=lambda: next(times))
    for event in (STATE_RUNNING, STEP_5, STEP_5, DONE):
        renderer.show(event)
    assert out.getvalue().splitlines() == [
        "job abc RUNNING",
        "epoch 1/10 [#####-----]  50% step 5/10 loss 1.0000",
    ]


def test_tty_rendering_redraws_the_bar_in_place() -> None:
    """On a terminal progress redraws one line with \\r; a state line first clears the bar."""
    out = io.StringIO()
    renderer = cli_watch.Renderer(out, tty=True)
    renderer.show(STEP_5)
    renderer.note("connection lost")
    renderer.show(STEP_5)
    renderer.end_line()
    bar = "epoch 1/10 [#####-----]  50% step 5/10 loss 1.0000"
    assert out.getvalue() == f"\r{bar}\r{' ' * len(bar)}\rconnection lost\n\r{bar}\n"


# ---------------------------------------------------------------------------------------------
# Downloads (client.write_chunks): all or nothing


def _chunks(data: bytes, size: int, total: int | None = None) -> list[pb.Chunk]:
    total = len(data) if total is None else total
    return [pb.Chunk(data=data[i : i + size], offset=i, total_size=total) for i in range(0, len(data), size)]


def test_download_writes_the_whole_file(tmp_path: Path) -> None:
    """Consecutive chunks are joined into the target file, and the byte count is returned."""
    data = bytes(range(256)) * 10
    target = tmp_path / "model.npz"
    assert write_chunks(_chunks(data, 1000), target) == len(data)
    assert target.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def _broken(chunks: list[pb.Chunk]) -> Iterator[pb.Chunk]:
    yield from chunks
    raise UNAVAILABLE


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        (_chunks(b"abcdef", 2)[::2], "chunk at offset 4, expected 2"),
        (_chunks(b"abcdef", 2, total=10), "got 6 bytes, expected 10"),
        (
            [pb.Chunk(data=b"ab", total_size=4), pb.Chunk(data=b"cd", offset=2, total_size=5)],
            "total size changed from 4 to 5",
        ),
        ([], "the server sent no data"),
    ],
    ids=["gap", "short", "size-changed", "empty"],
)
def test_download_rejects_inconsistent_streams(tmp_path: Path, chunks, error: str) -> None:
    """A gap, a short stream, a changing size or no data is an error and leaves no file."""
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    with pytest.raises(DownloadError, match=error):
        write_chunks(chunks, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert target.read_bytes() == b"old"


def test_download_broken_stream_leaves_no_partial_file(tmp_path: Path) -> None:
    """A stream that breaks midway raises the RpcError and leaves nothing behind."""
    with pytest.raises(grpc.RpcError):
        write_chunks(_broken(_chunks(b"abcdef", 2, total=12)), tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_download_into_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    """A download into a folder that does not exist names the destination, not a temporary file."""
    target = tmp_path / "missing" / "model.npz"
    with pytest.raises(FileNotFoundError) as raised:
        write_chunks(_chunks(b"abcdef", 2), target)
    assert str(raised.value) == f"cannot write {target}: the folder {target.parent} does not exist"


def test_a_download_that_cannot_be_written_names_the_target_not_the_temporary_file() -> None:
    """`download -o /proc/version`: the error names /proc/version, not the temporary file beside it
    (`/proc/.version.o4eatrxt.part`) that it could not create."""
    with pytest.raises(OSError) as raised:
        write_chunks(_chunks(b"abcdef", 2), Path("/proc/version"))
    assert str(raised.value).startswith("cannot write /proc/version: ")
    assert ".part" not in str(raised.value)


@pytest.mark.parametrize(
    ("existing", "umask", "mode"),
    [(None, 0o022, 0o644), (None, 0o077, 0o600), (0o444, 0o022, 0o444), (0o640, 0o002, 0o640)],
)
def test_a_download_gets_the_umask_s_mode_or_keeps_the_replaced_file_s(
    tmp_path: Path, existing: int | None, umask: int, mode: int
) -> None:
    """A new model file gets 0666 less the umask (mkstemp alone makes 0600); one that replaces a file
    keeps that file's mode, so a read-only model stays read-only, as `cp` onto it would leave it."""
    target = tmp_path / "model.npz"
    if existing is not None:
        target.write_bytes(b"old")
        target.chmod(existing)
    previous = os.umask(umask)
    try:
        write_chunks(_chunks(b"abcdef", 2), target)
    finally:
        os.umask(previous)
    assert (target.read_bytes(), target.stat().st_mode & 0o777) == (b"abcdef", mode)


def test_output_closed_early_exits_quietly() -> None:
    """Piping a command's output to `head` ends it with status 141 and nothing on stderr."""
    script = (
        "import sys; from service import cli\n"
        "cli._cmd_list = lambda args: [print('job', i) for i in range(100000)] and 0\n"
        "sys.exit(cli.main(['list']))"
    )
    shell = f'{sys.executable} -c "{script}" | head -1; echo ${{PIPESTATUS[0]}}'
    done = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["job 0", "141"]
    assert done.stderr == ""


def test_help_shows_the_defaults(capsys) -> None:
    """`serve --help` states each option's default, including the state folder and job limits."""
    with pytest.raises(SystemExit):
        _parse("serve", "--help")
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default 50051)", "(default state)", "jobs trained at once (default 1)"):
        assert text in out


@pytest.mark.parametrize(
    ("count", "error"),
    [
        ("-1", "got -1; the worker count must be at least 1"),
        ("0", "got 0;"),
        ("1099511627776", "got 1099511627776; more than any server allows"),
        ("x", "'x' is not"),
    ],
    ids=["negative", "zero", "huge", "text"],
)
def test_scale_refuses_impossible_worker_counts(capsys, count: str, error: str) -> None:
    """`gradfleet scale JOB N` with N below 1, beyond a uint32 or not a number is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        _parse("scale", "job1", count)
    assert exited.value.code == 2
    assert error in capsys.readouterr().err
