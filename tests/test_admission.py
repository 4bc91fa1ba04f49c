"""Submit-time checks against the dataset and the limits, through a real coordinator: each bad
spec is refused before a job exists, with the field, the value and what is allowed."""

from __future__ import annotations

import gzip
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service import progress
from service.client import CoordinatorClient
from service.datasets.probe import probe_dataset
from service.errors import LimitExceeded
from tests.conftest import start_coordinator
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]

MAX_PARAMS = 100_000
MAX_DATASET_BYTES = 1_000_000
MAX_WORKERS = 8
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_data(root: Path) -> None:
    """Every dataset the table below refers to, good and bad, under the data root."""
    write_blobs(root / "blobs.npz")  # 600 train, 20 features, 3 classes
    write_blobs(root / "wide.npz", n_train=64, n_test=16, features=784)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    np.savez(root / "reg.npz", x_train=x, y_train=rng.normal(size=(50, 2)) + 0.5)
    np.savez(root / "negative.npz", x_train=x, y_train=np.arange(50) - 1)
    np.savez(root / "wide-targets.npz", x_train=x, y_train=np.linspace(0, 3, 50))  # floats in [0, 3]
    (root / "wide-targets.csv").write_text("a,b,y\n" + "0.5,1,0.25\n" * 49 + "\n0.5,1,-0.5\n")
    (root / "negative.csv").write_text("1,2,0\n3,4,-1\n")
    np.savez(root / "objects.npz", x_train=np.array([{}] * 50, dtype=object), y_train=np.zeros(50))
    np.savez(root / "complex.npz", x_train=x.astype(np.complex64), y_train=np.zeros(50))
    np.savez(root / "strs.npz", x_train=np.full((50, 4), "a"), y_train=np.zeros(50))
    np.savez_compressed(root / "big.npz", x_train=np.zeros((2000, 200), np.float32), y_train=np.zeros(2000))
    (root / "bad.npz").write_bytes(b"this is not a zip archive")
    labels = np.arange(50) % 3
    np.savez(
        root / "nan.npz", x_train=np.where(np.arange(200).reshape(50, 4) == 30, np.nan, x), y_train=labels
    )
    test_x = np.where(np.arange(200).reshape(50, 4) == 13, -np.inf, x)
    np.savez_compressed(root / "inf-test.npz", x_train=x, y_train=labels, x_test=test_x, y_test=labels)
    np.savez(root / "huge-targets.npz", x_train=x, y_train=np.where(labels == 0, 1e300, 0.5 + labels))
    np.savez(root / "one-class.npz", x_train=x, y_train=np.zeros(50, dtype=np.int64))
    (root / "huge-label.csv").write_text("1,2,0\n3,4,1\n5,6,1e10\n")
    write_blobs(root / "two-hundred.npz", n_train=200, n_test=50)
    (root / "idx-nan").mkdir()  # float32 images: the NaN is sample 1, feature 2
    images = np.where(np.arange(16).reshape(4, 2, 2) == 6, np.nan, np.ones((4, 2, 2)))
    header = struct.pack(">HBB", 0, 0x0D, 3) + struct.pack(">3I", 4, 2, 2)
    (root / "idx-nan" / "train-images-idx3-ubyte").write_bytes(header + images.astype(">f4").tobytes())
    (root / "idx-nan" / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 1])))
    (root / "ragged.csv").write_text("1,2,0\n3,4,5,1\n")
    (root / "wide.csv").write_text(("0," * 199 + "0\n") * 2000)  # 800 kB of text, 1.6 MB of arrays
    (root / "idx").mkdir()
    (root / "idx" / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((4, 2, 2))))
    (root / "idx" / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2])))
    for name, compress in (("idx-cut", bytes), ("idx-cut-gz", gzip.compress)):
        (root / name).mkdir()  # image files 3 bytes short of what their headers declare
        (root / name / "train-images-idx3-ubyte").write_bytes(compress(_idx(np.zeros((4, 2, 2)))[:-3]))
        (root / name / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 1])))
    (root / "escape").mkdir()  # an IDX directory inside the root whose image file links out of it
    (root / "escape" / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 1])))
    (root.parent / "secret-images").write_bytes(_idx(np.zeros((4, 2, 2))))
    (root / "escape" / "train-images-idx3-ubyte").symlink_to(root.parent / "secret-images")
    # DATA_ROOT/fashion-mnist linking out of the root, to files whose magic is wrong: were they read,
    # the error would quote their first bytes
    (root.parent / "outside-fm").mkdir()
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (root.parent / "outside-fm" / stem).write_bytes(b"SECRET")
    (root / "fashion-mnist").symlink_to(root.parent / "outside-fm")


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory) -> Iterator:
    running = start_coordinator(
        tmp_path_factory.mktemp("admission"),
        max_params=MAX_PARAMS,
        max_dataset_bytes=MAX_DATASET_BYTES,
        max_workers_per_job=MAX_WORKERS,
    )
    _write_data(running.config.data_root)
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture
def client(server) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(server.address) as c:
        yield c


# One row per refusal: (id, uri, spec changes, status, field path, fragment of the message).
REFUSALS = [
    ("output-units-vs-classes", "npz:blobs.npz", {"layers": [{"units": 16}, {"units": 5}]},
     INVALID, "layers[1].units", "got 5; the dataset has 3 classes, so the last layer needs 3 units"),
    ("mse-output-units-vs-classes", "npz:blobs.npz",
     {"loss": "MEAN_SQUARED_ERROR", "layers": [{"units": 1}]},
     INVALID, "layers[0].units", "got 1; the dataset has 3 classes"),
    ("batch-vs-dataset", "npz:blobs.npz", {"batchSize": 601},
     INVALID, "batch_size", "got 601; the training set has only 600 samples"),
    ("batch-vs-max-train-samples", "npz:blobs.npz",
     {"batchSize": 150, "dataset": {"uri": "npz:blobs.npz", "maxTrainSamples": 100}},
     INVALID, "batch_size", "got 150; the training set has only 100 samples"),
    ("params-with-real-feature-count", "npz:wide.npz", {"layers": [{"units": 400}, {"units": 3}]},
     INVALID, "layers", "the model has 315,203 parameters (784 inputs); the limit is 100,000"),
    ("params-lower-bound", "npz:blobs.npz", {"layers": [{"units": 400}, {"units": 400}, {"units": 3}]},
     INVALID, "layers", "the limit is 100,000"),
    ("workers-over-limit", "npz:blobs.npz", {"numWorkers": MAX_WORKERS + 1},
     INVALID, "num_workers", f"got 9; must be between 1 and {MAX_WORKERS} (--max-workers-per-job)"),
    ("regression-needs-mse", "npz:reg.npz", {"layers": [{"units": 2}]},
     INVALID, "loss", "float targets, which need MEAN_SQUARED_ERROR"),
    ("regression-target-width", "npz:reg.npz", {"loss": "MEAN_SQUARED_ERROR", "layers": [{"units": 3}]},
     INVALID, "layers[0].units", "2 target columns, so the last layer needs 2 units"),
    ("missing-file", "npz:missing.npz", {}, INVALID, "dataset.uri", "missing.npz: file not found"),
    ("not-an-npz", "npz:bad.npz", {}, INVALID, "dataset.uri", "bad.npz: not an .npz archive"),
    ("object-array-needs-pickle", "npz:objects.npz", {}, INVALID, "dataset.uri", "object dtype"),
    ("complex-features", "npz:complex.npz", {}, INVALID, "dataset.uri",
     "complex.npz (array x_train): unsupported feature dtype complex64; store numbers"),
    ("string-features", "npz:strs.npz", {}, INVALID, "dataset.uri",
     "strs.npz (array x_train): unsupported feature dtype <U1; store numbers"),
    ("name-with-terminal-escape", "npz:blobs.npz", {"name": "a\x1b[31mRED\nline2"},
     INVALID, "name", "character 2 is U+001B, which is not printable"),
    ("negative-label", "npz:negative.npz", {}, INVALID, "dataset.uri", "negative label -1 at sample 0"),
    ("csv-negative-label-line", "csv:negative.csv", {}, INVALID, "dataset.uri",
     "negative.csv: negative label -1 at line 2, column 3; class labels must be 0..num_classes-1"),
    ("bce-targets-above-1", "npz:wide-targets.npz",
     {"loss": "BINARY_CROSS_ENTROPY", "layers": [{"units": 1}]}, INVALID, "loss",
     "wide-targets.npz (array y_train) at sample 49 has 3 (the targets range over [0, 3])"),
    ("bce-targets-below-0-csv", "csv:wide-targets.csv",
     {"loss": "BINARY_CROSS_ENTROPY", "layers": [{"units": 1}]}, INVALID, "loss",
     "binary cross-entropy needs targets in [0, 1], but /"),
    ("idx-counts-differ", "idx:idx", {}, INVALID, "dataset.uri", "image and label counts differ"),
    ("idx-truncated", "idx:idx-cut", {}, INVALID, "dataset.uri",
     "train-images-idx3-ubyte: truncated file: header dimensions 4x2x2 need 32 bytes (header included) "
     "but the file holds 29"),
    ("idx-gz-truncated", "idx:idx-cut-gz", {}, INVALID, "dataset.uri",
     "truncated file: header dimensions 4x2x2 need 32 bytes (header included) but the file holds 29 "
     "once decompressed"),
    ("npz-nan-feature", "npz:nan.npz", {}, INVALID, "dataset.uri",
     "nan.npz (array x_train): NaN or infinite feature value nan at sample 7, feature 2; clean or impute "
     "them before loading"),
    ("npz-inf-test-feature", "npz:inf-test.npz", {}, INVALID, "dataset.uri",
     "inf-test.npz (array x_test): NaN or infinite feature value -inf at sample 3, feature 1;"),
    ("csv-ragged-row", "csv:ragged.csv", {}, INVALID, "dataset.uri", "line 2: ragged row"),
    ("float64-targets-beyond-float32", "npz:huge-targets.npz",
     {"loss": "MEAN_SQUARED_ERROR", "layers": [{"units": 1}]}, INVALID, "dataset.uri",
     "huge-targets.npz (array y_train): target value 1e+300 at sample 0 (17 in all) is too large for "
     "float32 (|y| > 3.4e38), which targets are loaded as; rescale the targets in the file"),
    ("idx-float-nan-feature", "idx:idx-nan", {}, INVALID, "dataset.uri",
     "idx-nan/train-images-idx3-ubyte: NaN or infinite feature value nan at sample 1, feature 2; clean"),
    ("csv-whole-label-out-of-range", "csv:huge-label.csv", {}, INVALID, "layers[1].units",
     "got 3; the labels are whole numbers, but "),
    ("single-class", "npz:one-class.npz", {"layers": [{"units": 1}]}, INVALID, "loss",
     "got SOFTMAX_CROSS_ENTROPY; every label in the dataset is 0, a single class"),
    ("blank-name", "npz:blobs.npz", {"name": "  "}, INVALID, "name", "got only white space (2 characters)"),
    ("request-id-with-escape", "npz:blobs.npz", {"requestId": "r\x1b[2J"}, INVALID, "request_id",
     "character 2 is U+001B, which is not printable"),
    ("dot-dot", "npz:../state/jobs.sqlite3", {}, INVALID, "dataset.uri", "outside the data root"),
    ("absolute-path", "csv:/etc/passwd", {}, INVALID, "dataset.uri", "outside the data root"),
    ("symlinked-idx-file", "idx:escape", {}, INVALID, "dataset.uri",
     "escape/train-images-idx3-ubyte: the path leads outside the data root"),
    ("symlinked-fashion-mnist", "fashion-mnist", {}, INVALID, "dataset.uri",
     "fashion-mnist: the path leads outside the data root"),
    ("dataset-too-large", "npz:big.npz", {}, EXHAUSTED, "",
     "needs 1,616,000 bytes in memory; the limit is 1,000,000 (--max-dataset-bytes)"),
    ("csv-parsed-too-large", "csv:wide.csv", {}, EXHAUSTED, "",
     "needs 1,608,000 bytes in memory; the limit is 1,000,000 (--max-dataset-bytes)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "changes", "code", "field", "fragment"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_submit_refuses_a_spec_that_does_not_fit_its_dataset(client, uri, changes, code, field, fragment):
    """SubmitJob refuses each spec that cannot run on its dataset, naming field, value and limit."""
    with pytest.raises(grpc.RpcError) as caught:
        client.submit(small_spec(uri, **changes))
    assert caught.value.code() == code
    assert caught.value.details().startswith(f"{field}: " if field else "dataset ")
    assert fragment in caught.value.details()


def test_refused_specs_create_no_jobs_and_a_fitting_one_is_queued(client):
    """After every refusal no job exists; a spec that fits its dataset is then accepted."""
    for uri, changes, *_ in (r[1:] for r in REFUSALS):
        with pytest.raises(grpc.RpcError):
            client.submit(small_spec(uri, **changes))
    assert client.list() == []
    job = client.submit(small_spec("npz:blobs.npz", epochs=1))
    assert job.state in (pb.QUEUED, pb.RUNNING)
    assert [j.id for j in client.list()] == [job.id]
    client.cancel(job.id)


def test_a_whole_number_label_out_of_range_is_named_with_its_line(client, server):
    """A CSV label 1e10 is a label out of the output layer's range, at its line and column, not
    "float targets"."""
    with pytest.raises(grpc.RpcError) as caught:
        client.submit(small_spec("csv:huge-label.csv"))
    where = server.config.data_root.resolve() / "huge-label.csv"
    assert caught.value.details() == (
        f"layers[1].units: got 3; the labels are whole numbers, but {where} at line 3, column 3 has 1e+10, "
        "out of range for the output layer: with 3 units the labels must run 0..2; fix that label, or for "
        "numeric targets choose MEAN_SQUARED_ERROR, MEAN_ABSOLUTE_ERROR or HUBER"
    )


def _unset(spec: pb.JobSpec, *fields: str) -> pb.JobSpec:
    for field in fields:
        spec.ClearField(field)
    return spec


def test_a_batch_size_left_out_is_fitted_to_a_small_training_set_and_the_job_says_so(client):
    """Without batch_size a 200-sample training set trains in batches of 200 (the default 256 would be
    refused), micro_shards following; the job's message says so. A batch_size given stays refused."""
    job = client.submit(_unset(small_spec("npz:two-hundred.npz", epochs=1), "batch_size", "micro_shards"))
    client.cancel(job.id)
    assert (job.spec.batch_size, job.spec.micro_shards) == (200, 3)
    assert job.message.startswith(
        "batch_size not set: using 200, the whole training set, as the default 256 is larger"
    )
    with pytest.raises(grpc.RpcError, match="batch_size: got 256; the training set has only 200 samples"):
        client.submit(small_spec("npz:two-hundred.npz", batchSize=256, microShards=4))


def test_workers_beyond_the_micro_shards_are_named_idle_in_the_message_and_get(client):
    """batch_size 32 leaves micro_shards at 1: of 2 workers one has nothing to compute. The job is
    accepted (scaling is still allowed), and its message and `get` say so."""
    spec = _unset(small_spec("npz:blobs.npz", epochs=1000, batchSize=32, numWorkers=2), "micro_shards")
    job = client.submit(spec)
    idle = (
        "1 of the 2 workers is idle: a batch is split into micro_shards 1, and each worker computes whole "
        "micro-shards; to use them all, resubmit with micro_shards 2 or more, or scale to 1 worker"
    )
    assert job.spec.micro_shards == 1
    assert job.message.startswith(idle)  # submitted: maybe followed by why it waits
    deadline = time.monotonic() + 120
    while (running := client.get(job.id)).message != idle:  # said again once it trains
        assert running.state in (pb.QUEUED, pb.RUNNING) and time.monotonic() < deadline, running.message
        time.sleep(0.05)
    client.cancel(job.id)
    assert "workers: 2 (1 idle: micro_shards is 1)" in [
        " ".join(line.split()) for line in progress.format_job(running).splitlines()
    ]


def test_an_npz_without_a_test_split_is_accepted_and_the_job_says_so(client, server):
    """An npz with only x_train/y_train trains, and the job's message says there is no evaluation."""
    with np.load(server.config.data_root / "blobs.npz") as blobs:
        np.savez(
            server.config.data_root / "train-only.npz", x_train=blobs["x_train"], y_train=blobs["y_train"]
        )
    job = wait_for(client, client.submit(small_spec("npz:train-only.npz", epochs=1)).id, timeout_s=120)
    assert job.state == pb.SUCCEEDED
    note = "no test split in npz:train-only.npz (x_test/y_test); training without evaluation"
    assert job.message == note
    assert client.get(job.id).message == note


def _write_csv(path: Path, classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = [f"{a:.3f},{b:.3f},{i % classes}" for i, (a, b) in enumerate(rng.normal(size=(200, 2)))]
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(("name", "write"), [("changing.npz", write_blobs), ("changing.csv", _write_csv)])
def test_a_rewritten_dataset_is_probed_again(client, server, name, write):
    """The cached dataset facts, and for CSV the parsed arrays, are dropped when the file changes:
    4 classes now need 4 units."""
    path = server.config.data_root / name
    uri = f"{name.rsplit('.', 1)[1]}:{name}"
    write(path, classes=3)
    job = client.submit(small_spec(uri, epochs=1))
    client.cancel(job.id)
    write(path, classes=4, seed=1)
    stat = path.stat()  # a distinct modification time even on a coarse clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(grpc.RpcError) as caught:
        client.submit(small_spec(uri, epochs=1))
    assert "the dataset has 4 classes" in caught.value.details()


def test_a_large_csv_is_checked_by_its_first_lines_at_submit_and_whole_at_load(ray_session, tmp_path):
    """SubmitJob parses only the first --csv-check-bytes of a larger CSV file, so it answers at
    once: a bad row there is refused; a bad row further down, a label that needs more output
    units, or a target outside [0, 1] for binary cross-entropy, fails the job when it loads the
    data, naming the line or the field."""
    running = start_coordinator(tmp_path, csv_check_bytes=4096)
    root = running.config.data_root
    rows = "".join(f"{i % 7},{i % 5},{i % 3}\n" for i in range(2000))  # 12 kB, 3 classes
    (root / "early.csv").write_text("1,2,0\n1,2\n" + rows)
    (root / "late.csv").write_text(rows + "1,x,0\n")
    (root / "classes.csv").write_text(rows + "1,1,7\n")
    (root / "targets.csv").write_text("".join(f"{i % 7},{i % 5},0.5\n" for i in range(2000)) + "1,1,2.5\n")
    bce = {"loss": "BINARY_CROSS_ENTROPY", "layers": [{"units": 4}, {"units": 1}], "epochs": 1}
    try:
        with CoordinatorClient(running.address) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.submit(small_spec("csv:early.csv"))
            assert caught.value.code() == INVALID
            assert "early.csv: line 2: ragged row" in caught.value.details()
            late = client.submit(small_spec("csv:late.csv", epochs=1))
            classes = client.submit(small_spec("csv:classes.csv", epochs=1))
            targets = client.submit(small_spec("csv:targets.csv", **bce))
            late, classes = wait_for(client, late.id), wait_for(client, classes.id)
            targets = wait_for(client, targets.id)
    finally:
        running.stop(grace_s=1.0)
    assert late.state == pb.FAILED
    assert "late.csv: line 2001, column 2: non-numeric cell 'x'" in late.message
    assert classes.state == pb.FAILED
    assert "layers[1].units: got 3; the dataset has 8 classes" in classes.message
    assert targets.state == pb.FAILED
    assert "needs targets in [0, 1], but " in targets.message
    assert "targets.csv at line 2001, column 3 has 2.5" in targets.message


def test_npz_features_are_checked_for_nan_up_to_the_budget_at_submit_and_whole_at_load(ray_session, tmp_path):
    """SubmitJob reads the first --npz-check-bytes of each feature array for NaN and infinities: a bad
    value there is refused naming the array and sample; one further on fails the job at load."""
    running = start_coordinator(tmp_path, npz_check_bytes=4096)  # the first 51 samples of 20 float32
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(600, 20)).astype(np.float32), rng.integers(0, 3, 600)
    early, late = x.copy(), x.copy()
    early[10, 3], late[500, 3] = np.nan, np.inf
    np.savez(running.config.data_root / "early.npz", x_train=early, y_train=y)
    np.savez(running.config.data_root / "late.npz", x_train=late, y_train=y)
    try:
        with CoordinatorClient(running.address) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.submit(small_spec("npz:early.npz", epochs=1))
            assert caught.value.code() == INVALID
            assert caught.value.details().endswith(
                "early.npz (array x_train): NaN or infinite feature value nan at sample 10, feature 3; "
                "clean or impute them before loading"
            )
            late_job = wait_for(client, client.submit(small_spec("npz:late.npz", epochs=1)).id)
            assert len(client.list()) == 1  # the refused one made no job
    finally:
        running.stop(grace_s=1.0)
    assert late_job.state == pb.FAILED
    assert "late.npz (array x_train): NaN or infinite feature value inf at sample 500, feature 3" in (
        late_job.message
    )


def test_fashion_mnist_facts_come_from_headers(fashion_dir, tmp_path):
    """Probing Fashion-MNIST gives its shape and classes without decoding the images (well under 1 s)."""
    start = time.perf_counter()
    info = probe_dataset("fashion-mnist", tmp_path, extra_search=[fashion_dir], max_bytes=10**9)
    elapsed = time.perf_counter() - start
    assert (info.num_features, info.num_classes, info.num_train, info.num_test) == (784, 10, 60000, 10000)
    assert info.nbytes == 70000 * 784 + 70000 * 8
    assert elapsed < 1.0  # a full load decompresses 55 MB and takes seconds


def test_a_header_claiming_gigabytes_is_refused_before_reading(tmp_path):
    """A small gzip file whose IDX header claims 4 GB is refused by size, not decompressed."""
    d = tmp_path / "bomb"
    d.mkdir()
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 1_000_000, 64, 64)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    (d / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(1_000_000)))
    with pytest.raises(LimitExceeded, match=r"needs 4,104,000,000 bytes in memory; the limit is 1,000"):
        probe_dataset("idx:bomb", tmp_path, extra_search=(), max_bytes=1000)
