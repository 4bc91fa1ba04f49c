"""Admission: everything checked when a job is submitted, before it is created or anything starts.

The spec alone (ranges, enums, limits), then the spec against its dataset (output layer versus
classes, feature count and parameter limit, batch size versus training-set size: a batch_size left
out is fitted to a smaller training set, and the job's message says so), read cheaply
from file headers and cached until the files change (a CSV file larger than --csv-check-bytes: from
its first lines, the rest when the job loads it; the float features of an npz file or of IDX image
files are checked for NaN and infinities up to --npz-check-bytes of each array, the rest at load).
Every refusal is INVALID_ARGUMENT naming the field, or RESOURCE_EXHAUSTED naming the limit.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import NamedTuple

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.datasets import DatasetError, dataset_location, resolve_uri
from service.datasets.probe import (
    DatasetInfo,
    Fingerprint,
    check_file_size,
    csv_prefix_info,
    fingerprint,
    info_from_dataset,
    probe_dataset,
)
from service.datasets.tabular import check_csv_prefix, check_npz_features
from service.errors import InvalidSpec
from service.jobsetup import DatasetCache
from service.spec_defaults import fit_default_batch, with_defaults
from service.spec_validation import validate_against_dataset, validate_spec
from service.wording import idle_workers_note

INFO_CACHE_SIZE = 64  # dataset facts are small; a coordinator rarely sees more datasets than this


class Admitted(NamedTuple):
    """A spec that may run here, filled with defaults, and what its job's message should say about
    them at first ("" when nothing)."""

    spec: pb.JobSpec
    note: str


class Admission:
    """Checks a submitted spec against the server's limits and its dataset."""

    def __init__(self, config: ServerConfig, cache: DatasetCache) -> None:
        self._config = config
        # CSV files have no header: their full load (size-checked there) is shared with the runner.
        self._cache = cache
        self._lock = threading.Lock()
        self._infos: collections.OrderedDict[tuple[str, Path], tuple[DatasetInfo, Fingerprint]] = (
            collections.OrderedDict()
        )

    def check(self, request: pb.JobSpec) -> Admitted:
        """The spec with defaults filled (a batch_size left out fitted to the training set), and notes
        for the job's message; InvalidSpec or LimitExceeded if it cannot run here."""
        config = self._config
        limits = {"max_workers": config.max_workers_per_job, "max_params": config.max_params}
        spec = with_defaults(request)
        validate_spec(spec, **limits)
        info = self.dataset_info(spec.dataset.uri)
        limit, num_train = spec.dataset.max_train_samples, info.num_train
        if limit and num_train is not None:
            num_train = min(limit, num_train)
        spec, batch_note = fit_default_batch(request, num_train)
        if batch_note:
            validate_spec(spec, **limits)  # an explicit micro_shards may exceed the smaller batch
        validate_against_dataset(
            spec,
            info.num_features,
            info.num_classes,
            num_train,
            config.max_params,
            target_width=info.target_width,
            target_range=info.target_range,
        )
        idle_note = idle_workers_note(spec.num_workers, spec.micro_shards, spec.batch_size)
        return Admitted(spec, "; ".join(filter(None, (batch_note, idle_note))))

    def dataset_info(self, uri: str) -> DatasetInfo:
        """Facts about the dataset `uri`, from the cache while its files are unchanged."""
        try:
            return self._cached(uri) or self._probe(uri)
        except DatasetError as exc:
            raise InvalidSpec("dataset.uri", str(exc)) from None

    def _key(self, uri: str) -> tuple[str, Path]:
        """The URI and where its data lies now (fashion-mnist may have moved to DATA_ROOT)."""
        config = self._config
        return uri, dataset_location(uri, config.data_root, extra_search=config.dataset_search)

    def _cached(self, uri: str) -> DatasetInfo | None:
        key = self._key(uri)
        with self._lock:
            entry = self._infos.get(key)
        if entry is None or fingerprint(entry[0].files) != entry[1]:
            return None
        return entry[0]

    def _probe(self, uri: str) -> DatasetInfo:
        config, key = self._config, self._key(uri)
        resolved = resolve_uri(uri, config.data_root)
        if resolved.scheme == "csv":
            info = self._csv_info(uri, resolved.path)
        else:
            info = probe_dataset(
                uri,
                config.data_root,
                extra_search=config.dataset_search,
                max_bytes=config.max_dataset_bytes,
                feature_check_bytes=config.npz_check_bytes,  # float IDX images too
            )
            if resolved.scheme == "npz":  # a NaN feature would otherwise fail the job only at load
                check_npz_features(resolved.path, config.npz_check_bytes)
        with self._lock:
            self._infos[key] = (info, fingerprint(info.files))
            while len(self._infos) > INFO_CACHE_SIZE:
                self._infos.popitem(last=False)
        return info

    def _csv_info(self, uri: str, path: Path) -> DatasetInfo:
        """A CSV file up to --csv-check-bytes is parsed whole (its arrays cached for the runner).
        Of a larger one only the first lines are, so SubmitJob answers at once: its other rows,
        and what depends on all of them (classes, sample count, arrays in memory), are checked
        when the job loads it, failing the job with the same message."""
        check_bytes = self._config.csv_check_bytes
        if check_file_size(path, self._config.max_dataset_bytes) > check_bytes:
            num_features = check_csv_prefix(path, check_bytes)
            if num_features is not None:
                return csv_prefix_info(path, num_features)
        return info_from_dataset(self._cache.load(uri), (path,))
