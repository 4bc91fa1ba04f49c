"""Exact checkpoints of a running job: everything needed to continue bit-identically.

A checkpoint holds the flat parameters, the optimizer's state (Adam moments and step count,
momentum buffers), the step (which fixes the schedule position and, with the seed, the epoch and
the data order: `workers.batches.epoch_permutation(seed, epoch)`), the job's reported counters at
that step, the learning-rate scale left by divergence rollbacks, and what the export needs (layer
sizes, input normalization). One file per checkpoint under `state_dir/checkpoints/JOB/`:

    b"GFCKPT1\\n" + sha256(payload) as 64 hex digits + b"\\n" + payload (an .npz, no pickles)

written to a temporary file in the same folder, fsync'd, renamed, the folder fsync'd; the newest
`KEEP` intact checkpoints are kept. A file whose checksum does not match (truncated, corrupt) is
reported and skipped for the one before it, and never counts toward `KEEP`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gradfleet.v1 import coordinator_pb2 as pb
from service.durable import write_durably
from service.errors import JobNotReady
from service.export import model_arrays
from service.spec import spec_to_json
from workers.nn import Network

log = logging.getLogger(__name__)

MAGIC = b"GFCKPT1\n"
KEEP = 2
_HEADER_BYTES = len(MAGIC) + 64 + 1
_NAME = re.compile(r"^step-(\d{12})\.ckpt$")
# Spec fields that do not change what is computed: a checkpoint stays valid when only these differ.
_NOT_HASHED = (
    "name",
    "request_id",
    "num_workers",
    "eval_every_steps",
    "checkpoint_every_steps",
    "max_worker_restarts",
)


class CheckpointError(Exception):
    """No usable checkpoint although some exist; the message lists each file and what is wrong."""


@dataclass
class Checkpoint:
    """A job's complete training state after `step` optimizer steps."""

    step: int
    params: np.ndarray
    optimizer: dict  # Optimizer.state_dict()
    samples_trained: int  # the job's samples counter at `step`
    epoch: int  # epoch of the last applied step (0 before the first)
    spec_hash: str
    seed: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    input_offset: np.ndarray
    input_scale: np.ndarray
    lr_scale: float = 1.0  # product of the rollback factors applied so far
    rollbacks: int = 0
    extra: dict = field(default_factory=dict)

    def model_arrays(self, spec_json: str) -> dict[str, np.ndarray]:
        """The exported model (see service/export.py) with this checkpoint's weights."""
        net = Network(list(self.layer_sizes), list(self.activations), self.loss)
        return model_arrays(net.named_parameters(self.params), self.input_offset, self.input_scale, spec_json)


def spec_hash(spec: pb.JobSpec) -> str:
    """sha256 of the fields that decide the trained weights."""
    copy = pb.JobSpec()
    copy.CopyFrom(spec)
    for name in _NOT_HASHED:
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def encode(ckpt: Checkpoint) -> bytes:
    meta = {
        "step": ckpt.step,
        "samples_trained": ckpt.samples_trained,
        "epoch": ckpt.epoch,
        "spec_hash": ckpt.spec_hash,
        "seed": ckpt.seed,
        "layer_sizes": list(ckpt.layer_sizes),
        "activations": list(ckpt.activations),
        "loss": ckpt.loss,
        "lr_scale": ckpt.lr_scale,
        "rollbacks": ckpt.rollbacks,
        "optimizer_keys": sorted(ckpt.optimizer),
        "extra": ckpt.extra,
    }
    arrays = {f"opt.{k}": np.asarray(v) for k, v in ckpt.optimizer.items()}
    arrays |= {"params": ckpt.params, "input_offset": ckpt.input_offset, "input_scale": ckpt.input_scale}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _verified_payload(blob: bytes) -> bytes:
    """The payload of a checkpoint file's bytes once its header and checksum are right; else
    ValueError saying what is wrong."""
    if len(blob) < _HEADER_BYTES or not blob.startswith(MAGIC):
        raise ValueError(f"bad header: truncated to {len(blob)} bytes or not a gradfleet checkpoint")
    expected = blob[len(MAGIC) : _HEADER_BYTES - 1].decode("ascii", "replace")
    payload = blob[_HEADER_BYTES:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise ValueError(f"checksum mismatch over {len(payload)} bytes (truncated or corrupt)")
    return payload


def decode(blob: bytes) -> Checkpoint:
    """Parse and verify a checkpoint file's bytes; ValueError says what is wrong."""
    with np.load(io.BytesIO(_verified_payload(blob)), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        optimizer = {k: _scalar_or_array(data[f"opt.{k}"]) for k in meta["optimizer_keys"]}
        return Checkpoint(
            step=meta["step"],
            params=data["params"].copy(),
            optimizer=optimizer,
            samples_trained=meta["samples_trained"],
            epoch=meta["epoch"],
            spec_hash=meta["spec_hash"],
            seed=meta["seed"],
            layer_sizes=tuple(meta["layer_sizes"]),
            activations=tuple(meta["activations"]),
            loss=meta["loss"],
            input_offset=data["input_offset"].copy(),
            input_scale=data["input_scale"].copy(),
            lr_scale=meta["lr_scale"],
            rollbacks=meta["rollbacks"],
            extra=meta["extra"],
        )


def _scalar_or_array(value: np.ndarray):
    return value.item() if value.ndim == 0 else value.copy()


class CheckpointStore:
    """The checkpoint files of one job."""

    def __init__(self, state_dir: Path, job_id: str) -> None:
        self.folder = state_dir / "checkpoints" / job_id
        self._known_intact: set[Path] = set()  # written or verified here: never re-read to prune

    def files(self) -> list[Path]:
        """Complete checkpoint files, newest (highest step) first."""
        if not self.folder.is_dir():
            return []
        named = [p for p in self.folder.iterdir() if _NAME.match(p.name)]
        return sorted(named, key=lambda p: p.name, reverse=True)

    def save(self, ckpt: Checkpoint) -> Path:
        """Write atomically and durably, then drop all but the newest KEEP intact checkpoints."""
        path = self.folder / f"step-{ckpt.step:012d}.ckpt"
        write_durably(path, encode(ckpt), "the checkpoint")
        self._known_intact.add(path)
        self._prune()
        return path

    def _prune(self) -> None:
        """Remove checkpoints older than the KEEP newest intact ones. A corrupt file does not
        count: it stays, for inspection, until KEEP intact ones are newer. Files this store wrote
        or verified are not read again. Also removes temporary files a killed coordinator left
        half written."""
        intact = 0
        for path in self.files():
            if intact >= KEEP:
                path.unlink(missing_ok=True)
                self._known_intact.discard(path)
            elif path in self._known_intact or _is_intact(path):
                self._known_intact.add(path)
                intact += 1
        for tmp in self.folder.glob(".step-*.tmp"):
            tmp.unlink(missing_ok=True)

    def latest(
        self, expected_hash: str | None = None, written_step: int = 0
    ) -> tuple[Checkpoint | None, list[str]]:
        """The newest valid checkpoint and a note per newer file that was skipped, or (None, [])
        when there is none. CheckpointError when files exist and none is usable, or when there are
        none although the job wrote one at `written_step` (its folder was removed)."""
        problems = []
        for path in self.files():
            try:
                ckpt = decode(path.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                problems.append(f"{path.name}: {exc}")
                log.warning("checkpoint %s unusable: %s", path, exc)
                continue
            if expected_hash is not None and ckpt.spec_hash != expected_hash:
                problems.append(f"{path.name}: written for a different spec (hash {ckpt.spec_hash[:12]})")
                continue
            return ckpt, problems
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {self.folder}: " + "; ".join(problems) + "; the job will not "
                "restart from its initial weights silently: resubmit it to train from the start"
            )
        if written_step:
            raise CheckpointError(
                f"no checkpoint in {self.folder}, although the job wrote one at step {written_step} "
                "(was the folder removed or moved?); the job will not restart from its initial weights "
                "silently: resubmit it to train from the start"
            )
        return None, []

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def downloadable_model(state_dir: Path, final_model: Path, job: pb.Job) -> BinaryIO:
    """The .npz a client downloads, open for reading at its start (the caller closes it): the final
    model of a SUCCEEDED job, else the weights of its latest checkpoint (a running, failed, cancelled
    or interrupted job). JobNotReady if neither.

    A download reads only this descriptor, a chunk at a time: a model file replaced meanwhile (models
    and checkpoints are renamed into place) does not change what it sends, and a stalled download
    holds a file, not the model, in memory.
    """
    if job.state == pb.SUCCEEDED:
        try:
            return final_model.open("rb")
        except FileNotFoundError:
            raise JobNotReady(f"job {job.id} succeeded but its model file {final_model} is missing") from None
    try:
        ckpt, _skipped = CheckpointStore(state_dir, job.id).latest(spec_hash(job.spec))
    except CheckpointError as exc:
        raise JobNotReady(f"job {job.id} is {pb.JobState.Name(job.state)} and {exc}") from None
    if ckpt is None:
        raise JobNotReady(_no_model_message(job))
    export = tempfile.TemporaryFile(dir=state_dir)  # noqa: SIM115 (returned open); nameless: gone when closed
    try:
        np.savez(export, **ckpt.model_arrays(spec_to_json(job.spec)))
        export.seek(0)
    except BaseException:
        export.close()
        raise
    return export


def _no_model_message(job: pb.Job) -> str:
    state = pb.JobState.Name(job.state)
    if job.state in (pb.FAILED, pb.CANCELLED):  # it will never write one
        ended = "failed" if job.state == pb.FAILED else "was cancelled"
        return (
            f"job {job.id} {ended} before it wrote a checkpoint, so it has no model to download; "
            "resubmit it to train one"
        )
    return (
        f"job {job.id} is {state} with no checkpoint yet; a model can be downloaded once it has "
        "SUCCEEDED or written a checkpoint (`gradfleet watch` follows it)"
    )


def _is_intact(path: Path) -> bool:
    try:
        _verified_payload(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True
