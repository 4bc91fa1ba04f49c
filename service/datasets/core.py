"""The Dataset container, its error type, and the checks every loader's output goes through."""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from service.wording import plural

# Whole-number floats above this are surely measurements, not class indices (and would not
# survive the int64 conversion exactly).
_MAX_WHOLE_LABEL = 2**31
FLOAT32_MAX = float(np.finfo(np.float32).max)  # float features load as float32: beyond this is inf


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, the problem and the fix."""


# Where sample `row` of an array is in its file, for error messages: "sample 5", or for a CSV
# file "line 7, column 3".
SampleNamer = Callable[[int], str]


def _by_index(row: int) -> str:
    return f"sample {row}"


@dataclass(frozen=True)
class TargetRange:
    """The smallest and largest float (regression) target over both splits, and where each is
    ("d.npz (array y_train) at sample 5"), so a loss that needs a range can name the culprit."""

    low: float
    high: float
    low_at: str
    high_at: str
    whole: bool = False  # every target a whole number (a label beyond any class index, say 1e10)


_CONFINE_FIX = "put the dataset under the data root (--data-root) and give its path relative to it"


def confine(path: Path, data_root: Path, what: str, *, fix: str = _CONFINE_FIX) -> Path:
    """The real path of `path` (relative to `data_root`), refused unless it stays inside the root.

    Every file a loader opens from a client's URI goes through here, at submit time and again at
    load time (a file can be swapped for a symlink in between). `what` names it in the error, and
    `fix` says what to do instead.
    """
    try:
        root = data_root.resolve()
        real = (root / path).resolve()  # an absolute `path` replaces root in the join
    except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, names too long, symlink loops
        raise DatasetError(f"{what}: unusable path ({exc})") from None
    if not real.is_relative_to(root):
        raise DatasetError(
            f"{what}: the path leads outside the data root {root} (through '..', an absolute path "
            f"or a symlink); {fix}"
        )
    return real


_FILE_TYPES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    0: "a socket or device",
}
_REGULAR_FIX = "datasets are read from regular files: copy the data into one under the data root"


def open_regular(path: Path) -> BinaryIO:
    """`path` open for reading, once it is known to be a regular file; DatasetError otherwise.

    Every dataset file is opened here. O_NONBLOCK keeps the open of a FIFO from waiting forever for a
    writer, and the type is checked on the descriptor, so a file swapped for a FIFO, device or socket
    after any earlier check is refused, never read. The descriptor then blocks as usual.
    """
    try:
        handle = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))  # noqa: SIM115
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise _not_regular(path, stat.S_IFDIR) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a device without a driver
            raise _not_regular(path, 0) from None
        raise DatasetError(f"{path}: cannot open: {exc}") from None
    try:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, stat.S_IFMT(mode))
        os.set_blocking(handle.fileno(), True)
    except BaseException:
        handle.close()
        raise
    return handle


def _not_regular(path: Path, file_type: int) -> DatasetError:
    kind = _FILE_TYPES.get(file_type, "a device")
    return DatasetError(f"{path}: is not a regular file (it is {kind}); {_REGULAR_FIX}")


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays elementwise has no single truth
class Dataset:
    """Training (and optional test) arrays of one dataset.

    Attributes
    ----------
    x_train : ndarray of shape (n, features); uint8 and other integers as stored, floats as float32
    y_train : ndarray of shape (n,) int64 class labels, or float32 targets of shape (n,) or (n, k)
    x_test, y_test : same layout as the training arrays, or None when there is no test split
    num_classes : max label + 1 for class labels; 0 for float (regression) targets
    source : which files were read, for logs and job status
    target_range : the range of float targets and where its ends are; None for class labels
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    source: str
    target_range: TargetRange | None = None

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def target_width(self) -> int:
        """Target columns: 1 for class labels (and for a single regression target)."""
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes the arrays take in memory."""
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        return sum(a.nbytes for a in arrays if a is not None)


def assemble(
    arrays: Mapping[str, np.ndarray | None],
    origins: Mapping[str, str],
    *,
    source: str,
    allow_regression: bool,
    sample_names: Mapping[str, SampleNamer] | None = None,
    counts: str = "sample counts",
) -> Dataset:
    """Validate raw arrays keyed x_train, y_train, x_test, y_test and build a Dataset.

    `origins` names where each array came from (a file, or "file.npz (array x_train)") so every
    error can say which file to fix, and `sample_names` where a label is in it (by default
    "sample N"); `counts` names what differs when features and labels do not pair up ("image and
    label counts" for IDX files). Float labels that are all whole numbers are class labels; any
    other float labels are regression targets when `allow_regression`, else an error.
    """
    x_train = _features(arrays["x_train"], origins["x_train"])
    y_train = arrays["y_train"]
    _check_count(x_train, y_train, origins["x_train"], origins["y_train"], counts)
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is not None and y_test is not None:
        x_test = _features(x_test, origins["x_test"])
        _check_count(x_test, y_test, origins["x_test"], origins["y_test"], counts)
        if x_test.shape[1] != x_train.shape[1]:
            raise DatasetError(
                f"{origins['x_test']}: train/test feature counts differ: {x_test.shape[1]} "
                f"test features versus {x_train.shape[1]} in {origins['x_train']}; both splits "
                "must come from the same preprocessing"
            )
    targets, num_classes = _targets(
        {"y_train": y_train, "y_test": y_test},
        origins,
        allow_regression=allow_regression,
        names=sample_names or {},
    )
    target_range = _target_range(targets, origins, sample_names or {}) if num_classes == 0 else None
    return Dataset(x_train, targets["y_train"], x_test, targets["y_test"], num_classes, source, target_range)


def label_facts(
    ys: Mapping[str, np.ndarray | None], origins: Mapping[str, str], *, allow_regression: bool
) -> tuple[int, int, TargetRange | None]:
    """(num_classes, target columns, target range) of the label arrays, after the checks
    `assemble` makes.

    num_classes is 0 for float (regression) targets; target columns is 1 for class labels, and
    the range is None for them.
    """
    targets, num_classes = _targets(dict(ys), origins, allow_regression=allow_regression, names={})
    y = targets["y_train"]
    target_range = _target_range(targets, origins, {}) if num_classes == 0 else None
    return num_classes, 1 if y.ndim == 1 else int(y.shape[1]), target_range


def check_feature_dtype(dtype: np.dtype, origin: str) -> None:
    """DatasetError unless features of `dtype` load: bools, integers or floats (not complex numbers,
    strings, dates or records); the probe checks an .npz header with it, so submit refuses them."""
    if dtype.kind not in "buif":
        raise DatasetError(f"{origin}: unsupported feature dtype {dtype}; store numbers")


def _features(x: np.ndarray, origin: str) -> np.ndarray:
    """(n, ...) -> (n, features): integers kept, bools as uint8, floats as finite float32."""
    if x.ndim == 0 or x.shape[0] == 0:
        raise DatasetError(f"{origin}: empty dataset: no samples (shape {x.shape})")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise DatasetError(f"{origin}: no features: each sample is empty (shape {x.shape})")
    check_feature_dtype(x.dtype, origin)
    if x.dtype.kind == "b":
        return x.astype(np.uint8)
    if x.dtype.kind in "ui":
        return x
    stored = x
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, caught below
        x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        value = stored[row, col].item()
        # Of the kind of the value named: too large for float32, or NaN/infinite as stored.
        same_kind = bad & (np.isfinite(stored) if math.isfinite(value) else ~np.isfinite(stored))
        raise bad_feature(origin, value, int(row), int(col), f" ({int(same_kind.sum())} in all)")
    return x


CHECK_CHUNK_BYTES = 1 << 20  # read and tested at a time: memory stays small whatever the budget


def check_finite_prefix(
    stream: IO[bytes],
    shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    fortran: bool,
    max_bytes: int,
    origin: str,
    truncated: str,
) -> None:
    """The check `_features` makes (NaN, infinities, float64 beyond float32's range) over the first
    `max_bytes` stored bytes of a float array whose data `stream` starts at, read a chunk at a time,
    so the budget bounds the work; the npz and IDX submit-time checks share it. DatasetError (worded
    by `bad_feature`, for `origin`) names the lowest bad sample read; `truncated` is the message
    when the stream ends before the data its header declares. Other dtypes are always finite."""
    if dtype.kind != "f" or not shape:
        return
    count = min(math.prod(shape), max_bytes // dtype.itemsize)
    per_chunk = max(1, CHECK_CHUNK_BYTES // dtype.itemsize)
    found: tuple[int, int, float] | None = None  # (sample, feature, stored value)
    for start in range(0, count, per_chunk):
        size = min(per_chunk, count - start) * dtype.itemsize
        data = stream.read(size)
        if len(data) < size:
            raise DatasetError(truncated)
        values = np.frombuffer(data, dtype)
        with np.errstate(over="ignore"):  # as at load: float64 beyond float32 becomes inf there
            bad = np.flatnonzero(~np.isfinite(values.astype(np.float32)))
        if bad.size == 0:
            continue
        index = np.unravel_index(start + bad, shape, order="F" if fortran else "C")
        features = np.ravel_multi_index(index[1:], shape[1:]) if len(shape) > 1 else np.zeros_like(bad)
        first = int(np.lexsort((features, index[0]))[0])
        candidate = (int(index[0][first]), int(features[first]), values[bad[first]].item())
        found = candidate if found is None or candidate[:2] < found[:2] else found
        if not fortran:  # stored by sample: this chunk holds the lowest bad sample
            break
    if found is not None:
        sample, feature, value = found
        raise bad_feature(origin, value, sample, feature)


def bad_feature(origin: str, value: float, sample: int, feature: int, count: str = "") -> DatasetError:
    """The error for a float feature that is not usable: NaN or infinite as stored, or finite but too
    large for the float32 it loads as (rescaling is the fix, not imputing); `count` follows the
    position, e.g. " (3 in all)". The load (above) and the submit-time checks share it."""
    where = f"at sample {sample}, feature {feature}{count}"
    if math.isfinite(value):
        return DatasetError(
            f"{origin}: feature value {value:.3g} {where} is too large for float32 (|x| > 3.4e38), "
            "which float features are loaded as; rescale the features in the file (preprocessing "
            "SCALE and STANDARDIZE apply after that conversion and cannot help)"
        )
    return DatasetError(
        f"{origin}: NaN or infinite feature value {value} {where}; clean or impute them before loading"
    )


def _check_count(x: np.ndarray, y: np.ndarray, x_origin: str, y_origin: str, counts: str) -> None:
    n_labels = y.shape[0] if y.ndim else 0
    if n_labels != x.shape[0]:
        raise count_mismatch(y_origin, n_labels, x_origin, x.shape[0], counts)


def count_mismatch(y_origin: str, n_labels: int, x_origin: str, n_samples: int, counts: str) -> DatasetError:
    """The error for labels that do not pair up with the samples; `counts` names what differs
    ("image and label counts" for IDX files, "sample counts" for npz arrays). The load (above) and
    the submit-time header check share it."""
    return DatasetError(
        f"{y_origin}: {counts} differ: {n_labels} labels for {n_samples} samples in {x_origin}; "
        "features and labels must describe the same samples"
    )


def _targets(
    ys: dict[str, np.ndarray | None],
    origins: Mapping[str, str],
    *,
    allow_regression: bool,
    names: Mapping[str, SampleNamer],
) -> tuple[dict[str, np.ndarray | None], int]:
    """Class labels (int64) when every label is a whole number, else float32 regression targets."""
    present = {
        k: _squeeze_column(v, origins[k], names.get(k, _by_index)) for k, v in ys.items() if v is not None
    }
    if all(_is_whole(y) for y in present.values()):
        labels = {k: _class_labels(y, origins[k], names.get(k, _by_index)) for k, y in present.items()}
        num_classes = max(int(y.max()) for y in labels.values()) + 1
        return {k: labels.get(k) for k in ys}, num_classes
    if not allow_regression:
        key = next(k for k, y in present.items() if not _is_whole(y))
        y = present[key]
        if y.ndim != 1:
            raise DatasetError(f"{origins[key]}: class labels must have shape (n,), got {y.shape}")
        row = int(np.flatnonzero(~_whole_mask(y))[0])
        where = names.get(key, _by_index)(row)
        raise DatasetError(
            f"{origins[key]}: non-integer label {y[row]} at {where}; class labels must be "
            "whole numbers 0..num_classes-1"
        )
    columns = {k: _columns(y) for k, y in present.items()}
    if len(set(columns.values())) > 1:
        test = plural(columns["y_test"], "target column")
        raise DatasetError(
            f"{origins['y_test']}: train/test target shapes differ: {test} in the test split versus "
            f"{columns['y_train']} in {origins['y_train']}; both splits need the same number of "
            "target columns"
        )
    for key, y in present.items():
        _check_float32_targets(y, origins[key], names.get(key, _by_index))
    return {k: (None if y is None else present[k].astype(np.float32)) for k, y in ys.items()}, 0


def _columns(y: np.ndarray) -> int:
    return 1 if y.ndim == 1 else int(y.shape[1])


def _check_float32_targets(y: np.ndarray, origin: str, name: SampleNamer) -> None:
    """Float targets load as float32, where a float64 beyond its range becomes inf: the loss is then
    infinite at the first step, which reads like a problem with the features."""
    if y.dtype.kind != "f":
        return
    huge = np.abs(y) > FLOAT32_MAX
    if not huge.any():
        return
    flat = int(np.flatnonzero(huge)[0])
    row, column = divmod(flat, _columns(y))
    where = name(row) + (f", target column {column}" if y.ndim == 2 else "")
    raise DatasetError(
        f"{origin}: target value {y.flat[flat].item():.3g} at {where} ({int(huge.sum())} in all) is too "
        "large for float32 (|y| > 3.4e38), which targets are loaded as; rescale the targets in the file"
    )


def _target_range(
    targets: Mapping[str, np.ndarray | None], origins: Mapping[str, str], names: Mapping[str, SampleNamer]
) -> TargetRange:
    """The extremes of float targets (n,) or (n, k) over the splits, each with where it is."""
    ends = []
    for key, y in targets.items():
        if y is None or y.size == 0:
            continue
        for flat in (int(np.argmin(y)), int(np.argmax(y))):
            row, column = divmod(flat, 1 if y.ndim == 1 else y.shape[1])
            where = f"{origins[key]} at {names.get(key, _by_index)(row)}"
            ends.append((float(y.flat[flat]), where + (f", target column {column}" if y.ndim == 2 else "")))
    low, high = min(ends, key=lambda end: end[0]), max(ends, key=lambda end: end[0])
    whole = all(y.ndim == 1 and bool(np.all(y == np.trunc(y))) for y in targets.values() if y is not None)
    return TargetRange(low[0], high[0], low[1], high[1], whole)


def _squeeze_column(y: np.ndarray, origin: str, name: SampleNamer = _by_index) -> np.ndarray:
    """(n, 1) -> (n,) so a column vector of labels reads as labels; (n, k>1) stays (targets)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or y.dtype.kind not in "biuf":
        raise DatasetError(
            f"{origin}: labels must be numbers of shape (n,) or (n, k), got {y.dtype} {y.shape}"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        row = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DatasetError(f"{origin}: NaN or infinite label at {name(row)}; drop or fix it")
    return y


def _is_whole(y: np.ndarray) -> bool:
    if y.ndim != 1:
        return False
    return y.dtype.kind in "biu" or bool(_whole_mask(y).all())


def _whole_mask(y: np.ndarray) -> np.ndarray:
    return (y == np.trunc(y)) & (np.abs(y) < _MAX_WHOLE_LABEL)


def _class_labels(y: np.ndarray, origin: str, name: SampleNamer) -> np.ndarray:
    if y.dtype.kind == "u" and y.size and y.max() >= _MAX_WHOLE_LABEL:
        raise DatasetError(f"{origin}: label {y.max()} is too large for a class index")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        row = int(np.argmin(labels))
        raise DatasetError(
            f"{origin}: negative label {labels[row]} at {name(row)}; class labels must be "
            "0..num_classes-1 (shift them, or store regression targets as non-integer floats)"
        )
    return labels
