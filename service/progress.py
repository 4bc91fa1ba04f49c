"""Pure rendering of jobs and job events into text for the CLI; no I/O here, so it is testable."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from datetime import timezone

from google.protobuf.timestamp_pb2 import Timestamp

from gradfleet.v1 import coordinator_pb2 as pb
from service.wording import idle_workers, plural

TERMINAL_STATES = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED})
BAR_WIDTH = 10
LOG_INTERVAL_S = 2.0  # non-TTY output: at most one progress line per this many seconds


_CLASSIFICATION_LOSSES = (pb.LOSS_UNSPECIFIED, pb.SOFTMAX_CROSS_ENTROPY, pb.BINARY_CROSS_ENTROPY)
_REGRESSION_LOSSES = (pb.MEAN_SQUARED_ERROR, pb.MEAN_ABSOLUTE_ERROR, pb.HUBER)


def state_name(state: int) -> str:
    return pb.JobState.Name(state) if state in pb.JobState.values() else f"STATE_{state}"


def printable(text: str) -> str:
    """`text` with each non-printable character escaped (ESC as \\x1b, a newline as \\n): names of
    jobs stored before SubmitJob refused them must not drive the reader's terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`[#####-----]` for 0.5: filled cells rounded down, so 100% only when done."""
    filled = int(min(max(fraction, 0.0), 1.0) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


# Parts of the progress line dropped first to last when the terminal is too narrow for all.
_PROGRESS_DROP_ORDER = ("throughput", "step", "bar", "eval", "loss")


def format_progress(job: pb.Job, width: int | None = None) -> str:
    """One line: epoch 3/10 [#####-----]  45% step 700/2350 loss 0.3412 120,000 samples/s ...

    With `width` (columns), the least important parts go until the line fits: throughput, step,
    the bar's cells, eval, loss; whatever is left is cut at `width`."""
    parts = _progress_parts(job)
    for name in (*_PROGRESS_DROP_ORDER, None):
        line = " ".join(parts.values())
        if width is None or len(line) <= width:
            return line
        parts.pop(name, None)
    return line[: max(width, 0)]


def _progress_parts(job: pb.Job) -> dict[str, str]:
    p = job.progress
    fraction = p.step / p.total_steps if p.total_steps else 0.0
    parts = {
        "epoch": f"epoch {max(p.epoch, 1)}/{job.spec.epochs or '?'}",  # 0 before the first step: the first
        "bar": progress_bar(fraction),
        "percent": f"{int(fraction * 100):3d}%",
        "step": f"step {p.step}/{p.total_steps or '?'}",
    }
    if p.step:
        parts["loss"] = f"loss {_num(p.loss)}"
    if p.samples_per_second > 0:
        parts["throughput"] = format_rate(p.samples_per_second)
    if p.has_eval and (short := _short_eval_score(job)):
        parts["eval"] = f"eval {short}"
    return parts


def format_event(event: pb.JobEvent) -> str:
    """One log line per event, for non-TTY output."""
    job = event.job
    if event.kind == pb.JobEvent.EVAL:
        p = job.progress
        scores = [*eval_scores(job), f"loss {_num(p.eval_loss)}"]
        return f"eval at epoch {p.epoch} step {p.step}: {', '.join(scores)}"
    if event.kind == pb.JobEvent.PROGRESS:
        return format_progress(job)
    if event.kind == pb.JobEvent.CHECKPOINT:
        return f"checkpoint at step {job.progress.checkpoint_step}"
    if event.kind in (pb.JobEvent.ROLLBACK, pb.JobEvent.RECOVERED):
        return f"job {job.id} {pb.JobEvent.Kind.Name(event.kind).lower()}: {job.message}"
    line = f"job {job.id} {state_name(job.state)}"
    return f"{line}: {job.message}" if job.message else line


def format_rate(samples_per_second: float) -> str:
    """`35,500 samples/s`: three significant figures, digits grouped (not 3.55e+04); `12.5 samples/s`
    below 100."""
    if samples_per_second < 100:
        return f"{samples_per_second:.3g} samples/s"
    return f"{float(f'{samples_per_second:.3g}'):,.0f} samples/s"


def format_summary(job: pb.Job) -> str:
    """`job abc SUCCEEDED in 41.2 s: test accuracy 0.8891, loss 0.3012`, or why it did not."""
    elapsed = job_seconds(job)
    head = f"job {job.id} {state_name(job.state)}"
    if elapsed is not None:
        word = "in" if job.state == pb.SUCCEEDED else "after"
        head += f" {word} {format_duration(elapsed)}"
    p = job.progress
    if job.state == pb.SUCCEEDED and p.has_eval:
        return f"{head}: test {', '.join([*eval_scores(job), f'loss {_num(p.eval_loss)}'])}"
    if job.state == pb.SUCCEEDED:
        return f"{head}: training loss {_num(p.loss)}"
    return f"{head}: {job.message}" if job.message else head


def format_job(job: pb.Job) -> str:
    """A short readable block describing one job, for `gradfleet get`."""
    p = job.progress
    rows = [
        ("id", job.id),
        ("name", printable(job.spec.name)),
        ("state", state_name(job.state)),
        ("epoch", f"{p.epoch}/{job.spec.epochs or '?'}"),
        ("step", f"{p.step}/{p.total_steps or '?'}" + _percent(p.step, p.total_steps)),
    ]
    if job.spec.num_workers:  # the current count: `scale` changes it
        rows.insert(3, ("workers", f"{job.spec.num_workers}{_worker_notes(job.spec, p)}"))
    if p.step:
        rows.append(("loss", f"{_num(p.loss)} (learning rate {p.learning_rate:.3g})"))
    if p.has_eval:  # a regression's error measures get the metrics line
        rows.append(("eval", ", ".join([*_accuracies(job), f"loss {_num(p.eval_loss)}"])))
    top_k = p.eval_top_k_accuracy
    if p.has_eval and top_k and math.isfinite(top_k) and job.spec.loss in _CLASSIFICATION_LOSSES:
        rows.append(("metrics", f"top-{job.spec.eval_top_k or 5} accuracy {top_k:.4f}"))
    elif p.has_eval and (scores := _regression_scores(job)):
        rows.append(("metrics", ", ".join(scores)))
    if p.samples_per_second > 0:
        rows.append(("throughput", format_rate(p.samples_per_second)))
    if job.message:
        rows.append(("message", job.message))
    for label, stamp in (("created", "created_at"), ("started", "started_at")):
        if job.HasField(stamp):
            rows.append((label, format_time(getattr(job, stamp))))
    if job.HasField("finished_at"):
        rows.append(("finished", format_time(job.finished_at) + _took(job)))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)


def _worker_notes(spec: pb.JobSpec, p: pb.Progress) -> str:
    """Text like " (1 idle: micro_shards is 1; 2 replaced after failures; parameter server restarted
    1 time)": workers beyond the micro-shards, which have nothing to compute; worker actors replaced,
    one per dead worker; and restarts of the parameter server (with new workers), which are not in
    the second count; "" when none of these applies."""
    notes = []
    if spec.micro_shards and (idle := idle_workers(spec.num_workers, spec.micro_shards)):
        notes.append(f"{idle} idle: micro_shards is {spec.micro_shards}")
    if p.worker_restarts:
        notes.append(f"{p.worker_restarts} replaced after failures")
    if p.server_restarts:
        notes.append(f"parameter server restarted {plural(p.server_restarts, 'time')}")
    return f" ({'; '.join(notes)})" if notes else ""


def format_job_table(jobs: Sequence[pb.Job]) -> str:
    """A table with one row per job, for `gradfleet list`."""
    header = ("ID", "NAME", "STATE", "EPOCH", "STEP", "LOSS", "EVAL ACC", "CREATED")
    rows = [header] + [_table_row(job) for job in jobs]
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(_pad(cell, w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: 2 for wide and full-width characters (CJK, most emoji), 0 for
    combining marks, 1 otherwise; len() would misalign columns after such names."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _pad(cell: str, width: int) -> str:
    return cell + " " * (width - display_width(cell))


def _table_row(job: pb.Job) -> tuple[str, ...]:
    p = job.progress
    return (
        job.id,
        printable(job.spec.name),
        state_name(job.state),
        f"{p.epoch}/{job.spec.epochs or '?'}",
        f"{p.step}/{p.total_steps or '?'}",
        _num(p.loss) if p.step else "-",
        _table_accuracy(job),
        format_time(job.created_at) if job.HasField("created_at") else "-",
    )


def eval_scores(job: pb.Job) -> list[str]:
    """The latest evaluation's figures that mean something for the job: accuracy for class labels,
    per-label accuracy for multi-label outputs, MSE, MAE and R^2 for a regression loss."""
    return [*_accuracies(job), *_regression_scores(job)]


def _accuracies(job: pb.Job) -> list[str]:
    p, scores = job.progress, []
    if math.isfinite(p.eval_accuracy):  # NaN: float targets, where no output is "the" class
        scores.append(f"accuracy {p.eval_accuracy:.4f}")
    if job.spec.loss == pb.BINARY_CROSS_ENTROPY and math.isfinite(p.eval_label_accuracy):
        scores.append(f"per-label accuracy {p.eval_label_accuracy:.4f}")
    return scores


def _regression_scores(job: pb.Job) -> list[str]:
    p = job.progress
    if job.spec.loss not in _REGRESSION_LOSSES or not (
        math.isfinite(p.eval_mse) or math.isfinite(p.eval_mae)
    ):
        return []
    return [f"MSE {_num(p.eval_mse)}", f"MAE {_num(p.eval_mae)}", f"R^2 {_num(p.eval_r2)}"]


def _short_eval_score(job: pb.Job) -> str:
    """One figure for the progress line: `acc 0.8235`, `label acc 0.9120` or `MSE 0.0125`."""
    if headline := _headline_accuracy(job):
        return f"{headline[0]} {headline[1]:.4f}"
    if job.spec.loss in _REGRESSION_LOSSES and math.isfinite(job.progress.eval_mse):
        return f"MSE {_num(job.progress.eval_mse)}"
    return ""


def _table_accuracy(job: pb.Job) -> str:
    """The EVAL ACC column: the accuracy, the per-label one for multi-label jobs, else -."""
    headline = _headline_accuracy(job) if job.progress.has_eval else None
    return f"{headline[1]:.4f}" if headline else "-"


def _headline_accuracy(job: pb.Job) -> tuple[str, float] | None:
    p = job.progress
    if math.isfinite(p.eval_accuracy):
        return "acc", p.eval_accuracy
    if job.spec.loss == pb.BINARY_CROSS_ENTROPY and math.isfinite(p.eval_label_accuracy):
        return "label acc", p.eval_label_accuracy
    return None


class EventThrottle:
    """Decides which events a non-TTY watcher prints: every STATE and EVAL event, and PROGRESS
    events at most once per `interval` seconds (the caller passes the clock, for testability)."""

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._last_progress: float | None = None

    def should_print(self, event: pb.JobEvent, now: float) -> bool:
        if event.kind != pb.JobEvent.PROGRESS:
            return True
        if self._last_progress is not None and now - self._last_progress < self.interval:
            return False
        self._last_progress = now
        return True


def job_seconds(job: pb.Job) -> float | None:
    """Seconds from start (or creation) to finish; None while the job has not finished."""
    if not job.HasField("finished_at"):
        return None
    begin = job.started_at if job.HasField("started_at") else job.created_at
    if not begin.seconds and not begin.nanos:
        return None
    return max(_seconds(job.finished_at) - _seconds(begin), 0.0)


def format_duration(seconds: float) -> str:
    """41.2 s, 12 min 5 s, 2 h 3 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def format_time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(job: pb.Job) -> str:
    seconds = job_seconds(job)
    return f" (took {format_duration(seconds)})" if seconds is not None else ""


def _percent(done: int, total: int) -> str:
    return f" ({int(done / total * 100)}%)" if total else ""


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _num(value: float) -> str:
    """Losses with 4 decimals, but small or huge values in exponent form; nan/inf as words."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3e}"
