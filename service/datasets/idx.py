"""IDX files (the MNIST / Fashion-MNIST format), gzipped or plain, and directories of them.

An IDX file is a 4-byte magic number 00 00 TYPE NDIM, NDIM big-endian uint32 dimensions, then
the values in C order (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from service.datasets.core import (
    Dataset,
    DatasetError,
    assemble,
    check_finite_prefix,
    confine,
    open_regular,
)

logger = logging.getLogger(__name__)

# The four file names of an MNIST-style dataset, each optionally with a ".gz" suffix.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_COUNTS = "image and label counts"  # what differs when an image file and its label file disagree
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_REFETCH_HINT = "re-create or re-download it (Fashion-MNIST: gradfleet fetch-data --dest DIR)"


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in `directory` (plain name first), or None. A FIFO, socket or
    device of that name counts, so that reading it is refused by name rather than called missing."""
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.exists() and not path.is_dir():
            return path
    return None


def load_idx_dir(directory: Path, *, require_test: bool, source: str, root: Path | None = None) -> Dataset:
    """Load the four IDX files of `directory`; the t10k pair may be absent unless `require_test`.

    With `root`, every file must lie inside it (see `idx_paths`).
    """
    paths = idx_paths(directory, require_test=require_test, root=root)
    arrays = {key: read_idx(p, labels=key.startswith("y")) for key, p in paths.items() if p}
    names = ", ".join(p.name for p in paths.values() if p)
    return assemble(
        arrays,
        {key: str(p) for key, p in paths.items() if p},
        source=f"{source} ({names} in {directory})",
        allow_regression=False,
        counts=IDX_COUNTS,
    )


def idx_paths(directory: Path, *, require_test: bool, root: Path | None = None) -> dict[str, Path | None]:
    """The IDX file of each array key in `directory` (None: an absent optional test file).

    With `root` (a client's directory), each file's real path, refused if it is a symlink leading
    out of `root`: the directory being inside says nothing about the files in it.
    """
    try:
        if not directory.is_dir():
            raise DatasetError(f"{directory}: no such directory (expected the IDX files in it)")
        paths = {key: find_idx_file(directory, stem) for key, stem in IDX_FILES.items()}
    except OSError as exc:  # a name over 255 bytes, a path over 4,096, no permission
        raise DatasetError(f"{directory}: unusable directory: {exc.strerror or exc}") from None
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    test_optional = not require_test and paths["x_test"] is None and paths["y_test"] is None
    if missing and not (test_optional and len(missing) == 2):
        raise DatasetError(
            f"{directory}: IDX file(s) not found: {', '.join(missing)} (with or without .gz); "
            f"the directory must hold {', '.join(IDX_FILES.values())}"
        )
    if root is None:
        return paths
    return {key: p and confine(p, root, f"dataset file {p}") for key, p in paths.items()}


def read_idx(path: Path, *, labels: bool) -> np.ndarray:
    """Read one IDX file into a native-endian array; decompress if it starts with the gzip magic.

    `labels` says which role the file plays: label files must be 1-D, image files at least 2-D.
    """
    try:
        with _open(path) as stream:
            dtype, dims = _read_header(stream, path)
            expected = math.prod(dims) * dtype.itemsize
            payload = _read_all(stream, expected + 1)  # one byte more tells "trailing bytes"
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc
    if len(payload) != expected:
        problem = "truncated file" if len(payload) < expected else "trailing bytes after the data"
        raise DatasetError(
            f"{path}: {problem}: header dimensions {_dims(dims)} need {expected} "
            f"bytes of data but the file holds {'more' if len(payload) > expected else len(payload)}; "
            f"{_REFETCH_HINT}"
        )
    if labels != (len(dims) == 1):
        want = "1 dimension (labels)" if labels else "2 or more dimensions (images)"
        raise DatasetError(
            f"{path}: expected {want} but the header declares {len(dims)} dimensions; "
            "are the image and label files swapped?"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def read_idx_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and dimensions an IDX file declares; reads only its first bytes."""
    try:
        with _open(path) as stream:
            return _read_header(stream, path)
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc


def check_idx_features(path: Path, max_bytes: int) -> None:
    """The NaN and infinity check the load makes on float features (types 0x0D and 0x0E), over the
    first `max_bytes` bytes of the image file's data only, as `check_npz_features` does for npz
    arrays; integer types are always finite and are not read past the header."""
    try:
        with _open(path) as stream:
            dtype, dims = _read_header(stream, path)
            check_finite_prefix(
                stream,
                dims,
                dtype,
                fortran=False,  # IDX stores values in C order
                max_bytes=max_bytes,
                origin=str(path),
                truncated=f"{path}: truncated file: the data stops before its header's {_dims(dims)}; "
                + _REFETCH_HINT,
            )
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc


def check_stored_size(path: Path, dtype: np.dtype, dims: tuple[int, ...]) -> None:
    """DatasetError unless the file holds exactly the bytes its header declares, read cheaply: a
    plain file's size, or a gzip file's trailer ISIZE (uncompressed size mod 2**32, RFC 1952); only
    a gzip file whose trailer disagrees is decompressed, to tell truncated from too long."""
    needed = 4 + 4 * len(dims) + math.prod(dims) * dtype.itemsize  # magic, dimensions, values
    try:
        with open_regular(path) as stream:
            gzipped = stream.read(2) == _GZIP_MAGIC
            if gzipped:
                stream.seek(-4, os.SEEK_END)
                held = struct.unpack("<I", stream.read(4))[0]
            else:
                held = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if gzipped and held != needed % 2**32:
        # The trailer is only a hint: a truncated file ends in data, not a trailer, and a file of several
        # gzip members records only the last one. Decompress (at most what the size limit allowed) to know.
        held = _decompressed_size(path, needed, dims)
    if held != needed:
        problem = "truncated file" if held < needed else "trailing bytes after the data"
        holds = str(held) if held < needed or not gzipped else "more"  # gzip: counted to needed + 1 only
        raise DatasetError(
            f"{path}: {problem}: header dimensions {_dims(dims)} need {needed} bytes (header included) "
            f"but the file holds {holds}{' once decompressed' if gzipped else ''}; {_REFETCH_HINT}"
        )


def _decompressed_size(path: Path, needed: int, dims: tuple[int, ...]) -> int:
    """The bytes the gzip file `path` decompresses to, counted up to `needed` + 1."""
    size = 0
    try:
        with _open(path) as stream:
            while size <= needed and (chunk := stream.read(min(_CHUNK, needed + 1 - size))):
                size += len(chunk)
    except EOFError:  # "Compressed file ended before the end-of-stream marker was reached"
        raise DatasetError(
            f"{path}: truncated file: its gzip data stops after {size} of the {needed} bytes that header "
            f"dimensions {_dims(dims)} need (header included); {_REFETCH_HINT}"
        ) from None
    except (OSError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc
    return size


def _unreadable(path: Path, exc: Exception) -> DatasetError:
    # gzip's EOFError is "Compressed file ended before the end-of-stream marker was reached"
    if isinstance(exc, EOFError):
        return DatasetError(
            f"{path}: truncated file: its gzip data stops before the end-of-stream marker; {_REFETCH_HINT}"
        )
    return DatasetError(f"{path}: cannot read (corrupt gzip data or I/O error: {exc}); {_REFETCH_HINT}")


def _dims(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims))


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """Open plain or gzipped by content, not by name: mirrors rename and recompress freely."""
    with open_regular(path) as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
        handle.seek(0)
        logger.debug("reading %s (%s)", path, "gzip" if gzipped else "plain")
        if not gzipped:
            yield handle
            return
        with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
            yield stream


def _read_header(stream: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = stream.read(4)
    if len(magic) < 4:
        raise DatasetError(f"{path}: too short ({len(magic)} bytes) to be an IDX file")
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{magic.hex()}: expected 00 00 TYPE NDIM, e.g. "
            "0x00000803 for images and 0x00000801 for labels; is this an IDX file?"
        )
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{path}: truncated file: header ends inside the {ndim} dimensions")
    return _IDX_TYPES[type_code], struct.unpack(f">{ndim}I", raw_dims)


def _read_all(stream: BinaryIO, limit: int) -> bytearray:
    # A bytearray grows with what is actually there (a corrupt header may claim terabytes) and
    # is writable, so the arrays viewing it are too. `limit` stops a gzip bomb early.
    buffer = bytearray()
    while len(buffer) < limit and (chunk := stream.read(min(_CHUNK, limit - len(buffer)))):
        buffer += chunk
    return buffer
