"""Tabular datasets: numpy .npz archives and CSV files with the label in the last column."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO, TextIO

import numpy as np

from service.datasets.core import (
    FLOAT32_MAX,
    Dataset,
    DatasetError,
    assemble,
    check_finite_prefix,
    open_regular,
)

logger = logging.getLogger(__name__)

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_HINT = "save it with np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)"


def load_npz(path: Path) -> Dataset:
    """Load arrays x_train, y_train and optionally x_test, y_test; never unpickles anything."""
    arrays = _read_npz(path)
    origins = {key: f"{path} (array {key})" for key in _NPZ_KEYS}
    return assemble(arrays, origins, source=f"npz {path}", allow_regression=True)


def _read_npz(path: Path) -> dict[str, np.ndarray | None]:
    with open_npz(path) as archive:
        return {key: npz_array(archive, key, path) for key in _NPZ_KEYS}


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    """Open an .npz archive holding x_train and y_train (and both or neither test arrays)."""
    with open_regular(path) as handle, _npz_archive(handle, path) as archive:
        yield archive


def _npz_archive(handle: BinaryIO, path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(handle, allow_pickle=False)
    except ValueError as exc:  # neither zip nor .npy, so np.load wanted to unpickle it
        raise DatasetError(f"{path}: not an .npz archive (no zip or .npy data); {_NPZ_HINT}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not an .npz archive ({exc}); {_NPZ_HINT}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: holds a single array (.npy), not an .npz archive; {_NPZ_HINT}")
    missing = [key for key in ("x_train", "y_train") if key not in archive.files]
    problem = ""
    if missing:
        problem = f"missing array(s) {', '.join(missing)}; it has {archive.files}; " + _NPZ_HINT
    elif ("x_test" in archive.files) != ("y_test" in archive.files):
        problem = "has only one of x_test and y_test; store both or neither"
    if problem:
        archive.close()
        raise DatasetError(f"{path}: {problem}")
    return archive


def npz_header(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array `key` from its .npy header alone; refuses object (pickled) arrays."""
    with _member_errors(path, key, "has a corrupt header"), archive.zip.open(f"{key}.npy") as member:
        shape, _fortran, dtype = _read_header(member, key, path)
    return shape, dtype


def _read_header(member: IO[bytes], key: str, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the .npy header at the start of `member`, which is left
    at the first byte of the array's data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise DatasetError(f"{path}: array {key} uses .npy format {version}; save it with np.savez")
    if dtype.hasobject:
        raise DatasetError(
            f"{path}: array {key} has object dtype, which only pickle can load; store plain numeric arrays"
        )
    return tuple(shape), fortran, dtype


@contextlib.contextmanager
def _member_errors(path: Path, key: str, problem: str) -> Iterator[None]:
    """Errors reading array `key` of the archive as DatasetErrors naming it and `problem`."""
    try:
        yield
    except DatasetError:  # a ValueError too, already worded
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: array {key} {problem} ({exc}); rewrite the file") from exc


def check_npz_features(path: Path, max_bytes: int) -> None:
    """The NaN and infinity check load_npz makes on float features (float64 beyond float32's range
    included), over the first `max_bytes` stored bytes of each of x_train and x_test only: their
    .npy members are read as streams, a chunk at a time, so the budget bounds the work. Integer
    and bool features are always finite. DatasetError names the array, the sample (the lowest one
    among the bad values read) and the fix."""
    with open_npz(path) as archive:
        for key in ("x_train", "x_test"):
            if key in archive.files:
                with _member_errors(path, key, "is corrupt"), archive.zip.open(f"{key}.npy") as member:
                    shape, fortran, dtype = _read_header(member, key, path)
                    check_finite_prefix(
                        member,
                        shape,
                        dtype,
                        fortran=fortran,
                        max_bytes=max_bytes,
                        origin=f"{path} (array {key})",
                        truncated=f"{path}: array {key} is shorter than its header says; rewrite the file",
                    )


def npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray | None:
    if key not in archive.files:
        return None
    try:
        return archive[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DatasetError(
            f"{path}: array {key} cannot be loaded without pickle (object dtype?): {exc}; "
            "store plain numeric arrays"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: array {key} is corrupt ({exc}); rewrite the file") from exc


_CSV_ENCODING = "utf-8-sig"  # UTF-8, less the byte order mark Excel writes at the start


def load_csv(path: Path) -> Dataset:
    """Load numeric rows, label in the last column; a non-numeric first row is a header."""
    lines: list[int] = []
    with _csv_errors(path), io.TextIOWrapper(open_regular(path), _CSV_ENCODING, newline="") as handle:
        table = _table(_parse_rows(handle, path, lines), path)
    label_column = table.shape[1]
    return assemble(
        {"x_train": table[:, :-1], "y_train": table[:, -1]},
        {"x_train": str(path), "y_train": str(path)},
        source=f"csv {path}",
        allow_regression=True,
        # Blank lines and a header are skipped: name the line, as the parse errors do.
        sample_names={"y_train": lambda row: f"line {lines[row]}, column {label_column}"},
    )


def check_csv_prefix(path: Path, max_bytes: int) -> int | None:
    """The feature count of a CSV file, from the complete lines in its first `max_bytes` only,
    which get every per-row check `load_csv` makes (header, ragged rows, non-numeric and
    non-finite cells, with line numbers). None when no data row is complete within `max_bytes`.

    Labels are not checked: a later row can turn whole-number labels into regression targets.
    """
    with _csv_errors(path):
        with open_regular(path) as handle:
            head = handle.read(max_bytes + 1)
        cut = len(head) > max_bytes
        if cut:  # after the last complete line
            head = head[: head.rfind(b"\n", 0, max_bytes) + 1]
        rows = _parse_rows(io.StringIO(head.decode(_CSV_ENCODING), newline=""), path)
    if cut and not rows:
        return None
    return _table(rows, path).shape[1] - 1


def _table(rows: list[np.ndarray], path: Path) -> np.ndarray:
    table = np.array(rows, dtype=np.float64)
    if table.size == 0:
        raise DatasetError(f"{path}: empty dataset: no data rows (only a header or blank lines?)")
    if table.shape[1] < 2:
        raise DatasetError(f"{path}: only 1 column; need at least 2 (features..., label)")
    return table


@contextlib.contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """Reading errors as DatasetErrors naming the file."""
    try:
        yield
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc}); is it really a CSV file?") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def _parse_rows(handle: TextIO, path: Path, lines: list[int] | None = None) -> list[np.ndarray]:
    """The data rows as float64 arrays; `lines`, if given, gets the line number of each."""
    reader = csv.reader(handle)
    rows: list[np.ndarray] = []
    first_line = data_line = 0
    header: list[str] = []
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines, e.g. a trailing newline
            line = reader.line_num
            values = _parse_row(cells, path, line, header_allowed=not first_line)
            first_line = first_line or line
            if values is None:
                logger.info("%s: line %d is a header row, skipping it", path, line)
                header = cells
                continue
            data_line = data_line or line
            if header and not rows and len(header) != len(values):
                raise _header_mismatch(path, header, first_line, len(values), line)
            if rows and len(values) != len(rows[0]):
                raise DatasetError(
                    f"{path}: line {line}: ragged row with {len(values)} columns, but line "
                    f"{data_line} has {len(rows[0])}; every row needs the same columns"
                )
            rows.append(values)
            if lines is not None:
                lines.append(line)
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    return rows


def _header_mismatch(path: Path, header: list[str], header_line: int, width: int, line: int) -> DatasetError:
    # A "# comment" line has no numeric cell, so it reads as a header: of the wrong width, as a rule.
    hint = "; CSV has no comment lines: remove it" if header[0].lstrip().startswith("#") else ""
    return DatasetError(
        f"{path}: line {header_line}: the header row has {len(header)} "
        f"{'cell' if len(header) == 1 else 'cells'} but line {line} has {width} columns; a header "
        f"names every column{hint}"
    )


def _parse_row(cells: list[str], path: Path, line: int, *, header_allowed: bool) -> np.ndarray | None:
    """The row as float64; None for a header: only the first row, and only if no cell is a number
    (a data row with one typo must not vanish as a header)."""
    try:
        values = np.array(cells, dtype=np.float64)  # same syntax as float(), at C speed
    except ValueError:
        numeric = [_is_number(cell) for cell in cells]
        if header_allowed and not any(numeric):
            return None
        column = numeric.index(False)
        rule = "a header row has no numeric cells; every other cell must be a number"
        raise DatasetError(
            f"{path}: line {line}, column {column + 1}: non-numeric cell {_clip(cells[column])}; {rule}"
        ) from None
    if not _plain_numbers(cells):  # float() takes 1_000 and non-ASCII digits; CSV readers do not
        column = next(i for i, cell in enumerate(cells) if not _plain_numbers([cell]))
        raise DatasetError(
            f"{path}: line {line}, column {column + 1}: {_clip(cells[column])} is not a plain number "
            "(digit separators '_' and non-ASCII digits or spaces are Python syntax, which other "
            "CSV readers refuse); write it with ASCII digits, e.g. 1000 or 1.5e3"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        column = int(np.argmax(bad))
        raise DatasetError(
            f"{path}: line {line}, column {column + 1}: {_clip(cells[column])} is not a finite "
            "number (NaN or infinite); clean or impute it"
        )
    huge = np.abs(values) > FLOAT32_MAX
    if huge.any():  # every column loads as float32 (labels too, as targets), where this is inf
        column = int(np.argmax(huge))
        raise DatasetError(
            f"{path}: line {line}, column {column + 1}: {_clip(cells[column])} is too large for float32 "
            "(|x| > 3.4e38), which the values are loaded as; rescale the column in the file"
        )
    return values


def _is_number(cell: str) -> bool:
    if not _plain_numbers([cell]):
        return False
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _plain_numbers(cells: list[str]) -> bool:
    """No cell uses the syntax only Python's float() reads: '_' between digits, non-ASCII digits or
    spaces (one test over the whole row keeps it at C speed)."""
    text = "".join(cells)
    return text.isascii() and "_" not in text


def _clip(cell: str) -> str:
    """The cell for an error message, cut short: a binary or foreign file can have huge cells."""
    return repr(cell if len(cell) <= 40 else cell[:40] + "...")
