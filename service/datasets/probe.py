"""Facts about a dataset read cheaply (headers and label arrays, never the features), so a job spec
can be checked against its data when it is submitted, before anything starts.

IDX files are read up to their header (and checked against the file size, or for gzip its
trailer's uncompressed size), .npz arrays up to their .npy header; only the labels are
loaded, and only after the sizes every header declares are checked against the size limit (a small
gzip file can claim gigabytes). CSV files have no header to read: they are loaded whole, after a
check of the file size, and their arrays checked against the limit once parsed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.datasets.core import (
    Dataset,
    DatasetError,
    TargetRange,
    check_feature_dtype,
    count_mismatch,
    label_facts,
)
from service.datasets.idx import (
    IDX_COUNTS,
    check_idx_features,
    check_stored_size,
    idx_paths,
    read_idx,
    read_idx_header,
)
from service.datasets.tabular import npz_array, npz_header, open_npz
from service.datasets.uri import fashion_mnist_dir, resolve_uri
from service.errors import LimitExceeded

_LABEL_BYTES = 8  # labels become int64
_SPLITS = (("x_train", "y_train"), ("x_test", "y_test"))

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What a spec is checked against; sizes in samples and bytes (in memory once loaded).

    None: not known until the whole file is parsed (a large CSV file, see `csv_prefix_info`).
    """

    num_features: int
    num_classes: int | None  # 0 for float (regression) targets
    target_width: int | None  # target columns: 1 for class labels
    num_train: int | None
    num_test: int | None
    nbytes: int | None
    files: tuple[Path, ...]  # the files read, to notice when they change
    target_range: TargetRange | None = None  # float targets only


def probe_dataset(
    uri: str, data_root: Path, *, extra_search: Sequence[Path], max_bytes: int, feature_check_bytes: int = 0
) -> DatasetInfo:
    """Facts about the dataset `uri` names; DatasetError if unusable, LimitExceeded if too large.

    Float IDX image files have their first `feature_check_bytes` of data checked for NaN and
    infinities too (npz archives: `check_npz_features`)."""
    resolved = resolve_uri(uri, data_root)
    if resolved.path is None:
        found = fashion_mnist_dir(data_root, extra_search)
        return _probe_idx(
            found.directory, found.root, require_test=True, max_bytes=max_bytes, check=feature_check_bytes
        )
    if resolved.scheme == "idx":
        return _probe_idx(
            resolved.path, data_root, require_test=False, max_bytes=max_bytes, check=feature_check_bytes
        )
    if resolved.scheme == "npz":
        return _probe_npz(resolved.path, max_bytes)
    raise ValueError(f"probe_dataset cannot read {resolved.scheme} headers; use info_from_dataset")


def check_declared_size(
    uri: str, data_root: Path, *, extra_search: Sequence[Path], max_bytes: int
) -> tuple[Path, ...]:
    """The files the dataset `uri` is read from, once the size their headers declare (for a CSV
    file, its size) is within `max_bytes`; LimitExceeded otherwise. Reads no features."""
    resolved = resolve_uri(uri, data_root)
    if resolved.scheme == "csv":
        check_file_size(resolved.path, max_bytes)
        return (resolved.path,)
    return probe_dataset(uri, data_root, extra_search=extra_search, max_bytes=max_bytes).files


def fingerprint(files: tuple[Path, ...]) -> Fingerprint:
    """Size and modification time of each file; () for files that are gone (never matches)."""
    try:
        stats = [(str(path), path.stat()) for path in files]
    except OSError:
        return ()
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


def csv_prefix_info(path: Path, num_features: int) -> DatasetInfo:
    """The facts a CSV file's first lines give: only its feature count (the rest stay None)."""
    return DatasetInfo(num_features, None, None, None, None, None, (path,))


def info_from_dataset(dataset: Dataset, files: tuple[Path, ...]) -> DatasetInfo:
    """The facts of a dataset already loaded (CSV files have no header to read them from)."""
    return DatasetInfo(
        num_features=dataset.num_features,
        num_classes=dataset.num_classes,
        target_width=dataset.target_width,
        num_train=len(dataset.y_train),
        num_test=0 if dataset.y_test is None else len(dataset.y_test),
        nbytes=dataset.nbytes,
        files=files,
        target_range=dataset.target_range,
    )


def check_file_size(path: Path, max_bytes: int) -> int:
    """The size of the file at `path`; LimitExceeded if over `max_bytes`, DatasetError if missing."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    check_size(str(path), size, max_bytes)
    return size


def check_size(what: str, nbytes: int, max_bytes: int) -> None:
    """LimitExceeded naming the limit and its flag when `nbytes` of dataset `what` exceed it."""
    if nbytes > max_bytes:
        raise LimitExceeded(
            f"dataset {what} needs {nbytes:,} bytes in memory; the limit is {max_bytes:,} "
            "(--max-dataset-bytes); use a smaller dataset or ask the operator to raise the limit"
        )


def _probe_idx(
    directory: Path, root: Path | None, *, require_test: bool, max_bytes: int, check: int
) -> DatasetInfo:
    """`root`: the data root every file must stay in (None for the operator's Fashion-MNIST copy);
    `check`: bytes of each float image file's data checked for NaN and infinities."""
    paths = {k: p for k, p in idx_paths(directory, require_test=require_test, root=root).items() if p}
    headers = {key: read_idx_header(path) for key, path in paths.items()}
    shapes = {key: dims for key, (_dtype, dims) in headers.items()}
    nbytes = sum(
        math.prod(dims) * (_LABEL_BYTES if key.startswith("y") else dtype.itemsize)
        for key, (dtype, dims) in headers.items()
    )
    check_size(str(directory), nbytes, max_bytes)
    for key, (dtype, dims) in headers.items():
        check_stored_size(paths[key], dtype, dims)
    origins = {key: str(path) for key, path in paths.items()}
    _check_shapes(shapes, origins, IDX_COUNTS)
    for key in ("x_train", "x_test"):
        if check and key in paths and headers[key][0].kind == "f":  # integer images are finite: not read
            check_idx_features(paths[key], check)
    labels = {key: read_idx(paths[key], labels=True) for key in ("y_train", "y_test") if key in paths}
    return _info(shapes, labels, origins, nbytes, tuple(paths.values()), allow_regression=False)


def _probe_npz(path: Path, max_bytes: int) -> DatasetInfo:
    with open_npz(path) as archive:
        keys = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in archive.files]
        headers = {key: npz_header(archive, key, path) for key in keys}
        nbytes = sum(
            math.prod(shape) * _loaded_itemsize(key, dtype) for key, (shape, dtype) in headers.items()
        )
        check_size(str(path), nbytes, max_bytes)
        origins = {key: f"{path} (array {key})" for key in keys}
        shapes = {key: shape for key, (shape, _dtype) in headers.items()}
        _check_shapes(shapes, origins, "sample counts")
        for key in ("x_train", "x_test"):
            if key in headers:
                check_feature_dtype(headers[key][1], origins[key])
        labels = {key: npz_array(archive, key, path) for key in ("y_train", "y_test") if key in keys}
    return _info(shapes, labels, origins, nbytes, (path,), allow_regression=True)


def _loaded_itemsize(key: str, dtype: np.dtype) -> int:
    """Bytes per element once loaded: labels as int64, float features as float32."""
    if key.startswith("y"):
        return _LABEL_BYTES
    return 4 if dtype.kind == "f" else dtype.itemsize


def _check_shapes(shapes: dict[str, tuple[int, ...]], origins: dict[str, str], counts: str) -> None:
    """The checks `assemble` makes on counts and feature widths, from the shapes alone; `counts` as
    for `assemble`."""
    widths = {}
    for x_key, y_key in _SPLITS:
        if x_key not in shapes:
            continue
        x, y = shapes[x_key], shapes[y_key]
        if not x or x[0] == 0:
            raise DatasetError(f"{origins[x_key]}: empty dataset: no samples (shape {x})")
        widths[x_key] = math.prod(x[1:])
        if widths[x_key] == 0:
            raise DatasetError(f"{origins[x_key]}: no features: each sample is empty (shape {x})")
        if (y[0] if y else 0) != x[0]:
            raise count_mismatch(origins[y_key], y[0] if y else 0, origins[x_key], x[0], counts)
    if len(set(widths.values())) > 1:
        raise DatasetError(
            f"{origins['x_test']}: train/test feature counts differ: {widths['x_test']} test "
            f"features versus {widths['x_train']} in {origins['x_train']}; both splits must come "
            "from the same preprocessing"
        )


def _info(
    shapes: dict[str, tuple[int, ...]],
    labels: dict[str, np.ndarray],
    origins: dict[str, str],
    nbytes: int,
    files: tuple[Path, ...],
    *,
    allow_regression: bool,
) -> DatasetInfo:
    num_classes, width, target_range = label_facts(
        {"y_train": labels["y_train"], "y_test": labels.get("y_test")},
        origins,
        allow_regression=allow_regression,
    )
    return DatasetInfo(
        num_features=math.prod(shapes["x_train"][1:]),
        num_classes=num_classes,
        target_width=width,
        num_train=shapes["x_train"][0],
        num_test=shapes["x_test"][0] if "x_test" in shapes else 0,
        nbytes=nbytes,
        files=files,
        target_range=target_range,
    )
