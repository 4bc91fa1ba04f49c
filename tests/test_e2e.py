"""End to end: real Ray, a real coordinator on a loopback port, jobs submitted through the client."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from examples.predict import predict, read_idx
from gradfleet.v1 import coordinator_pb2 as pb
from service.spec import load_spec_file
from tests.helpers import small_spec, wait_for, write_blobs, write_broken

pytestmark = [pytest.mark.integration, pytest.mark.ray]
ROOT = Path(__file__).resolve().parent.parent


def download_arrays(client, job_id: str, path: Path) -> dict[str, np.ndarray]:
    client.download(job_id, path)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.slow
def test_fashion_mnist_subset_learns_and_the_model_predicts_the_same(client, fashion_dir, tmp_path):
    """A real Fashion-MNIST job learns, and the downloaded model scores what the service reported."""
    spec = load_spec_file(ROOT / "examples" / "quick.yaml")
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    assert job.progress.has_eval
    assert job.progress.eval_accuracy >= 0.80
    model = download_arrays(client, job.id, tmp_path / "model.npz")
    n_test = spec.dataset.max_test_samples
    x = read_idx(str(fashion_dir / "t10k-images-idx3-ubyte.gz")).reshape(10000, -1)[:n_test]
    y = read_idx(str(fashion_dir / "t10k-labels-idx1-ubyte.gz"))[:n_test]
    numpy_accuracy = float((predict(model, x) == y).mean())
    assert numpy_accuracy == pytest.approx(job.progress.eval_accuracy, abs=1.5 / n_test)


def test_results_do_not_depend_on_worker_count(client, coordinator, tmp_path):
    """The same spec and seed with 1, 2 and 3 workers, and twice with 2, give bit-identical weights."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    weights = []
    for workers in (1, 2, 3, 2):
        job = client.submit(small_spec("npz:blobs.npz", numWorkers=workers))
        done = wait_for(client, job.id)
        assert done.state == pb.SUCCEEDED, done.message
        weights.append(download_arrays(client, job.id, tmp_path / f"{workers}-{job.id}.npz"))
    names = [n for n in weights[0] if n != "spec_json"]  # the spec differs in num_workers
    assert len(names) == 6
    for other in weights[1:]:
        assert weights[0].keys() == other.keys()
        for name in names:
            assert np.array_equal(weights[0][name], other[name]), name


def test_every_new_engine_option_trains_identically_with_1_and_3_workers(client, coordinator, tmp_path):
    """A spec using dropout, leaky_relu, gelu, Nesterov with weight decay and clipping, and a warmed-up
    one-cycle schedule trains to bit-identical weights with 1 and 3 workers and reports eval metrics."""
    write_blobs(coordinator.config.data_root / "blobs-options.npz")
    options = {
        "layers": [
            {"units": 16, "activation": "LEAKY_RELU", "slope": 0.1, "dropout": 0.3, "init": "HE_UNIFORM"},
            {"units": 8, "activation": "GELU", "dropout": 0.2, "init": "GLOROT_NORMAL"},
            {"units": 3},
        ],
        "optimizer": {
            "kind": "NESTEROV",
            "learningRate": 0.05,
            "weightDecay": 1e-4,
            "clipNorm": 1.0,
            "schedule": {"kind": "ONE_CYCLE", "warmupSteps": 3},
        },
        "labelSmoothing": 0.1,
        "evalTopK": 2,
    }
    weights, jobs = [], []
    for workers in (1, 3):
        job = client.submit(small_spec("npz:blobs-options.npz", numWorkers=workers, **options))
        done = wait_for(client, job.id)
        assert done.state == pb.SUCCEEDED, done.message
        jobs.append(done)
        weights.append(download_arrays(client, job.id, tmp_path / f"options-{workers}.npz"))
    for name in (n for n in weights[0] if n != "spec_json"):
        assert np.array_equal(weights[0][name], weights[1][name]), name
    progress = jobs[0].progress
    assert progress.eval_accuracy > 0.9
    assert progress.eval_accuracy <= progress.eval_top_k_accuracy <= 1.0
    # a classifier's logits have no regression metrics (distances to one-hot rows mean nothing)
    assert np.isnan(progress.eval_mse) and np.isnan(progress.eval_mae) and np.isnan(progress.eval_r2)


def test_more_workers_than_micro_shards_and_samples(client, coordinator):
    """Idle workers get no work: no hang and no NaN when workers outnumber shards and samples."""
    write_blobs(coordinator.config.data_root / "tiny.npz", n_train=10, n_test=5)
    spec = small_spec("npz:tiny.npz", numWorkers=3, microShards=2, batchSize=2, epochs=1)
    job = wait_for(client, client.submit(spec).id, timeout_s=120)
    assert job.state == pb.SUCCEEDED, job.message
    assert job.progress.samples_trained == 10
    assert np.isfinite(job.progress.loss)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_counters_are_exact_and_exported(client, coordinator, workers):
    """After a job with 1, 2 or 3 workers, the samples counter equals the samples trained on (last
    partial batch kept)."""
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=613)
    spec = small_spec("npz:blobs.npz", batchSize=50, epochs=3, numWorkers=workers)
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    assert job.progress.samples_trained == 3 * 613
    assert job.progress.step == job.progress.total_steps == 3 * 13
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert f'gradfleet_job_samples_total{{job_id="{job.id}"}} {3 * 613}.0' in text
    assert f'gradfleet_job_steps_total{{job_id="{job.id}"}} 39.0' in text
    assert 'gradfleet_jobs{state="succeeded"} 1.0' in text
    assert f'gradfleet_job_eval_accuracy{{job_id="{job.id}"}}' in text


def test_cancel_stops_a_running_job(client, coordinator):
    """CancelJob on a running job ends it CANCELLED within seconds."""
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=5000)
    job = client.submit(small_spec("npz:blobs.npz", epochs=1000, batchSize=10))
    wait_for(client, job.id, states={pb.RUNNING}, timeout_s=60)
    while client.get(job.id).progress.step == 0:
        time.sleep(0.05)
    client.cancel(job.id)
    done = wait_for(client, job.id, timeout_s=10)
    assert done.state == pb.CANCELLED
    assert done.progress.step < done.progress.total_steps


def test_a_cancel_during_the_final_evaluation_ends_the_job_cancelled(client, coordinator, monkeypatch):
    """A cancel after the last step (during the final evaluation, before the model is written) is
    not ignored: the job ends CANCELLED, as the RUNNING state in the cancel's reply promised."""
    from service.runner import JobRunner

    evaluate, replies = JobRunner._evaluate, []

    def evaluate_then_cancel(runner, *args):
        if runner._step >= runner._setup.total_steps and not replies:
            replies.append(client.cancel(runner.job_id))  # through gRPC, from the runner's own thread
        evaluate(runner, *args)

    monkeypatch.setattr(JobRunner, "_evaluate", evaluate_then_cancel)
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id, timeout_s=60)
    assert [r.state for r in replies] == [pb.RUNNING]
    assert job.state == pb.CANCELLED, job.message
    assert job.progress.step == job.progress.total_steps


def test_errors_carry_status_codes(client, coordinator):
    """Bad spec: INVALID_ARGUMENT naming the field; unknown job: NOT_FOUND; early download:
    FAILED_PRECONDITION."""
    with pytest.raises(grpc.RpcError) as bad:
        client.submit(small_spec("npz:blobs.npz", numWorkers=0))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "num_workers" in bad.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        client.get("no-such-job")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=5000)
    job = client.submit(small_spec("npz:blobs.npz", epochs=1000, batchSize=10))
    with pytest.raises(grpc.RpcError) as early:
        client.download(job.id, coordinator.config.state_dir / "early.npz")
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not (coordinator.config.state_dir / "early.npz").exists()
    client.cancel(job.id)
    wait_for(client, job.id, timeout_s=30)


def test_a_bad_dataset_fails_the_job_with_a_clear_message(client, coordinator):
    """A missing dataset, or a NaN feature within --npz-check-bytes, is refused at submit; a NaN
    further on fails the job when it is loaded (not the server), and the message says which file
    and sample."""
    with pytest.raises(grpc.RpcError) as refused:
        client.submit(small_spec("npz:missing.npz"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing.npz: file not found" in refused.value.details()
    x = np.ones((60, 20), np.float32)
    x[7, 3] = np.nan
    np.savez(coordinator.config.data_root / "nan.npz", x_train=x, y_train=np.arange(60) % 3)
    with pytest.raises(grpc.RpcError) as refused:
        client.submit(small_spec("npz:nan.npz"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nan.npz (array x_train): NaN or infinite feature value nan at sample 7, feature 3" in (
        refused.value.details()
    )
    write_broken(coordinator.config.data_root / "late-nan.npz")
    job = wait_for(client, client.submit(small_spec("npz:late-nan.npz")).id, timeout_s=60)
    assert job.state == pb.FAILED
    assert "late-nan.npz (array x_train): NaN or infinite feature value nan at sample " in job.message
    assert client.list()  # the coordinator still answers


def test_large_model_downloads_intact(client, coordinator, tmp_path):
    """A model of over 2 million parameters (above gRPC's 4 MiB message limit) downloads byte for byte."""
    write_blobs(coordinator.config.data_root / "wide.npz", n_train=64, n_test=16, features=784)
    spec = small_spec("npz:wide.npz", layers=[{"units": 2600}, {"units": 3}], epochs=1, batchSize=64)
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    path = tmp_path / "wide.npz"
    size = client.download(job.id, path)
    assert size > 7 * 1024 * 1024  # well above the 4 MiB message limit
    served = coordinator.config.state_dir / "models" / f"{job.id}.npz"
    assert path.read_bytes() == served.read_bytes()
    with np.load(path, allow_pickle=False) as model:
        params = sum(model[n].size for n in model.files if n.startswith("layer_"))
    assert params == 784 * 2600 + 2600 + 2600 * 3 + 3
