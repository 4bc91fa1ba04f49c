"""The live progress line fits the terminal: the least important parts go first."""

from __future__ import annotations

import io

import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service import cli_watch, progress


def _running() -> pb.Job:
    job = pb.Job(id="abc", spec=pb.JobSpec(name="mlp", epochs=2), state=pb.RUNNING)
    p = job.progress
    p.epoch, p.step, p.total_steps, p.loss, p.samples_per_second = 2, 158, 158, 0.41234, 123456
    p.has_eval, p.eval_accuracy = True, 0.8235
    return job


FULL = "epoch 2/2 [##########] 100% step 158/158 loss 0.4123 123,000 samples/s eval acc 0.8235"


@pytest.mark.parametrize(
    ("width", "line"),
    [
        (None, FULL),
        (len(FULL), FULL),
        (79, "epoch 2/2 [##########] 100% step 158/158 loss 0.4123 eval acc 0.8235"),
        (60, "epoch 2/2 [##########] 100% loss 0.4123 eval acc 0.8235"),
        (42, "epoch 2/2 100% loss 0.4123 eval acc 0.8235"),
        (41, "epoch 2/2 100% loss 0.4123"),
        (30, "epoch 2/2 100% loss 0.4123"),
        (12, "epoch 2/2 10"),
    ],
)
def test_the_progress_line_drops_parts_to_fit_the_width(width, line) -> None:
    assert progress.format_progress(_running(), width) == line


def test_the_terminal_bar_never_reaches_the_last_column() -> None:
    """On an 80-column terminal every redraw, padding included, stays within 79 columns."""
    out = io.StringIO()
    renderer = cli_watch.Renderer(out, tty=True, columns=lambda: 80)
    event = pb.JobEvent(kind=pb.JobEvent.PROGRESS, job=_running())
    renderer.show(event)
    renderer.show(event)
    renderer.end_line()
    redraws = out.getvalue().rstrip("\n").split("\r")[1:]
    assert redraws and all(len(text) <= 79 for text in redraws)
    assert redraws[-1].rstrip() == "epoch 2/2 [##########] 100% step 158/158 loss 0.4123 eval acc 0.8235"


def test_the_job_table_pads_wide_names_by_their_display_width() -> None:
    """A name of wide characters (2 columns each) is padded by columns, so later columns line up."""
    jobs = [
        pb.Job(id="a1", spec=pb.JobSpec(name="日本語🚀"), state=pb.QUEUED),
        pb.Job(id="b2", spec=pb.JobSpec(name="plain"), state=pb.QUEUED),
        pb.Job(id="c3", spec=pb.JobSpec(name="cafe\u0301"), state=pb.QUEUED),  # e + combining accent
    ]
    lines = progress.format_job_table(jobs).splitlines()
    state_columns = {progress.display_width(line[: line.index("QUEUED")]) for line in lines[1:]}
    assert state_columns == {progress.display_width(lines[0][: lines[0].index("STATE")])}
    assert lines[1].startswith("a1  日本語🚀  QUEUED")
