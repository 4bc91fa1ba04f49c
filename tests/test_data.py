"""Dataset loading: URIs, the IDX/npz/CSV readers, and the errors for unusable files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from service.config import ServerConfig
from service.datasets import Dataset, DatasetError, DatasetUri, core, load_dataset, resolve_uri
from service.datasets.probe import probe_dataset
from service.datasets.tabular import check_csv_prefix, check_npz_features
from service.errors import LimitExceeded
from service.jobsetup import DatasetCache

NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IMAGES = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
LABELS = np.array([0, 1, 2, 1], dtype=np.uint8)
_BIG_ENDIAN = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx(array, type_code: int = 0x08, *, magic: bytes = b"", cut: int = 0, extra: bytes = b""):
    """IDX bytes for `array`; magic/cut/extra corrupt the header or payload on purpose."""
    array = np.asarray(array)
    header = magic or struct.pack(">HBB", 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(_BIG_ENDIAN[type_code]).tobytes()
    return header + payload[: len(payload) - cut] + extra


def idx_files(directory: str = "d", **overrides: bytes | None) -> dict[str, bytes | None]:
    """A valid tiny four-file IDX set under `directory`; overrides replace (None removes) files."""
    files = {
        NAMES["x_train"]: idx(IMAGES),
        NAMES["y_train"]: idx(LABELS),
        NAMES["x_test"]: idx(IMAGES[:2]),
        NAMES["y_test"]: idx(LABELS[:2]),
    }
    files.update(overrides)
    return {f"{directory}/{name}": data for name, data in files.items()}


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write(root: Path, files: dict[str, bytes | None]) -> None:
    for name, data in files.items():
        if data is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)


X3 = np.arange(9, dtype=np.float64).reshape(3, 3)
Y3 = np.array([0, 1, 1])
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES = NAMES["x_train"], NAMES["y_train"], NAMES["x_test"]

BAD_INPUTS = [
    pytest.param(
        idx_files(**{TRAIN_IMAGES: idx(IMAGES, magic=b"\x12\x34\x08\x03")}),
        "idx:d", TRAIN_IMAGES, "wrong IDX magic number", id="idx-bad-magic",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: b"\x00\x00"}),
        "idx:d", TRAIN_IMAGES, "too short (2 bytes) to be an IDX file", id="idx-two-byte-file",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: idx(IMAGES, cut=3)}),
        "idx:d", TRAIN_IMAGES, "truncated file", id="idx-truncated-payload",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: b"\x00\x00\x08\x03\x00\x00\x00\x04\x00"}),
        "idx:d", TRAIN_IMAGES, "header ends inside", id="idx-truncated-header",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: idx(IMAGES, extra=b"\x00")}),
        "idx:d", TRAIN_IMAGES, "trailing bytes", id="idx-trailing-bytes",
    ),
    pytest.param(
        idx_files(**{TRAIN_LABELS: idx(LABELS[:3])}),
        "idx:d", TRAIN_LABELS, "image and label counts differ", id="idx-count-mismatch",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: idx(IMAGES[:0]), TRAIN_LABELS: idx(LABELS[:0])}),
        "idx:d", TRAIN_IMAGES, "empty dataset", id="idx-empty",
    ),
    pytest.param(
        idx_files(**{TRAIN_LABELS: idx([0, -1, 2, 1], 0x09)}),
        "idx:d", TRAIN_LABELS, "negative label -1", id="idx-negative-label",
    ),
    pytest.param(
        idx_files(**{TRAIN_LABELS: idx([0, 1.5, 2, 1], 0x0D)}),
        "idx:d", TRAIN_LABELS, "non-integer label 1.5", id="idx-non-integer-label",
    ),
    pytest.param(
        idx_files(**{TRAIN_LABELS: idx(IMAGES)}),
        "idx:d", TRAIN_LABELS, "image and label files swapped", id="idx-labels-are-images",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: idx(np.where(IMAGES == 5, np.nan, IMAGES), 0x0D)}),
        "idx:d", TRAIN_IMAGES, "NaN or infinite feature", id="idx-nan-feature",
    ),
    pytest.param(
        idx_files(**{TEST_IMAGES: idx(np.zeros((2, 3, 3)))}),
        "idx:d", TEST_IMAGES, "train/test feature counts differ", id="idx-feature-mismatch",
    ),
    pytest.param(
        idx_files(**{TRAIN_LABELS: None}),
        "idx:d", TRAIN_LABELS, "not found", id="idx-missing-train-labels",
    ),
    pytest.param(
        idx_files(**{NAMES["y_test"]: None}),
        "idx:d", NAMES["y_test"], "not found", id="idx-half-test-split",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: None, TRAIN_IMAGES + ".gz": gzip.compress(idx(IMAGES))[:30]}),
        "idx:d", TRAIN_IMAGES + ".gz", "truncated file: its gzip data stops", id="idx-truncated-gzip",
    ),
    pytest.param(
        idx_files(**{TRAIN_IMAGES: None, TRAIN_IMAGES + ".gz": gzip.compress(idx(IMAGES))[:-8] + bytes(8)}),
        "idx:d", TRAIN_IMAGES + ".gz", "corrupt gzip", id="idx-corrupt-gzip",
    ),
    pytest.param({}, "idx:nowhere", "nowhere", "no such directory", id="idx-no-directory"),
    pytest.param(
        {"d.npz": npz(x_train=X3)}, "npz:d.npz", "d.npz", "missing array(s) y_train",
        id="npz-missing-array",
    ),
    pytest.param(
        {"d.npz": npz(x_train=np.array([[1], "a", None], dtype=object), y_train=Y3)},
        "npz:d.npz", "d.npz", "without pickle", id="npz-object-array",
    ),
    pytest.param(
        {"d.npz": b"x_train,y_train\n"}, "npz:d.npz", "d.npz", "not an .npz archive",
        id="npz-not-an-archive",
    ),
    pytest.param(
        {"d.npz": npy(X3)}, "npz:d.npz", "d.npz", "single array (.npy)", id="npz-is-npy",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=Y3, x_test=X3)},
        "npz:d.npz", "d.npz", "only one of x_test and y_test", id="npz-half-test-split",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=np.array([0.0, -1.0, 1.0]))},
        "npz:d.npz", "d.npz", "negative label -1", id="npz-negative-whole-float-label",
    ),
    pytest.param(
        {"d.npz": npz(x_train=np.where(X3 == 4, np.inf, X3), y_train=Y3)},
        "npz:d.npz", "d.npz", "NaN or infinite feature", id="npz-inf-feature",
    ),
    pytest.param(
        {"d.npz": npz(x_train=np.where(X3 == 4, 1e300, X3), y_train=Y3)},
        "npz:d.npz", "d.npz", "feature value 1e+300 at sample 1, feature 1 (1 in all) is too large for "
        "float32 (|x| > 3.4e38), which float features are loaded as; rescale the features in the file "
        "(preprocessing SCALE and STANDARDIZE apply after that conversion and cannot help)",
        id="npz-float32-overflow",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=Y3, x_test=np.where(X3 == 5, np.nan, X3), y_test=Y3)},
        "npz:d.npz", "d.npz", "(array x_test): NaN or infinite feature", id="npz-nan-test-feature",
    ),
    pytest.param(
        {"d.npz": npz(x_train=np.asfortranarray(np.where(X3 == 2, -np.inf, X3)), y_train=Y3)},
        "npz:d.npz", "d.npz", "NaN or infinite feature value -inf at sample 0, feature 2",
        id="npz-inf-feature-fortran-order",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=np.array([0.5, np.nan, 1.0]))},
        "npz:d.npz", "d.npz", "NaN or infinite label", id="npz-nan-target",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=np.array([0.5, 1e300, 1.5]))},
        "npz:d.npz", "d.npz", "(array y_train): target value 1e+300 at sample 1 (1 in all) is too large "
        "for float32 (|y| > 3.4e38), which targets are loaded as; rescale the targets in the file",
        id="npz-float32-overflow-target",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=np.array([[0.5, 1], [-1e39, 2], [1.5, 3]]))},
        "npz:d.npz", "d.npz", "target value -1e+39 at sample 1, target column 0 (1 in all) is too large",
        id="npz-float32-overflow-target-column",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=np.array(["a", "b", "c"]))},
        "npz:d.npz", "d.npz", "labels must be numbers", id="npz-string-labels",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=Y3[:2])},
        "npz:d.npz", "d.npz", "(array y_train): sample counts differ: 2 labels for 3 samples in",
        id="npz-count-mismatch",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3[:0], y_train=Y3[:0])},
        "npz:d.npz", "d.npz", "empty dataset", id="npz-empty",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=Y3, x_test=X3[:, :2], y_test=Y3)},
        "npz:d.npz", "d.npz", "train/test feature counts differ", id="npz-feature-mismatch",
    ),
    pytest.param(
        {"d.npz": npz(x_train=X3, y_train=X3 + 0.5, x_test=X3, y_test=X3[:, :2] + 0.5)},
        "npz:d.npz", "d.npz", "(array y_test): train/test target shapes differ: 2 target columns in the "
        "test split versus 3 in", id="npz-target-width-mismatch",
    ),
    pytest.param(
        {"d.csv": b"1,2,0\n3,4,1\n5,1\n"}, "csv:d.csv", "d.csv", "line 3: ragged row",
        id="csv-ragged",
    ),
    pytest.param(
        {"d.csv": b"a,b,label\n1,2,0\n3,x,1\n"}, "csv:d.csv", "d.csv",
        "line 3, column 2: non-numeric cell 'x'", id="csv-non-numeric-cell",
    ),
    pytest.param(
        {"d.csv": b"a,b,label\nc,d,e\n1,2,0\n"}, "csv:d.csv", "d.csv",
        "line 2, column 1: non-numeric", id="csv-second-header",
    ),
    pytest.param(
        {"d.csv": b"oops,1,2\n3,4,1\n"}, "csv:d.csv", "d.csv",
        "line 1, column 1: non-numeric cell 'oops'; a header row has no numeric cells",
        id="csv-typo-in-first-row",
    ),
    pytest.param(
        {"d.csv": b"1,nan,0\n"}, "csv:d.csv", "d.csv", "line 1, column 2: 'nan' is not a finite",
        id="csv-nan-cell",
    ),
    pytest.param(
        {"d.csv": b"1,2,0\n-1e300,4,1\n"}, "csv:d.csv", "d.csv", "line 2, column 1: '-1e300' is too "
        "large for float32 (|x| > 3.4e38), which the values are loaded as; rescale the column",
        id="csv-float32-overflow",
    ),
    pytest.param(
        {"d.csv": b"# x1..x2, label\n1,2,0\n3,4,1\n"}, "csv:d.csv", "d.csv",
        "line 1: the header row has 2 cells but line 2 has 3 columns; a header names every column; CSV "
        "has no comment lines: remove it", id="csv-comment-line-as-header",
    ),
    pytest.param(
        {"d.csv": b"a,b,c,label\n1,2,0\n"}, "csv:d.csv", "d.csv",
        "line 1: the header row has 4 cells but line 2 has 3 columns; a header names every column",
        id="csv-header-wider-than-rows",
    ),
    pytest.param(
        {"d.csv": b"a,b,label\n1,2,0\n3,4,1_0\n"}, "csv:d.csv", "d.csv",
        "line 3, column 3: '1_0' is not a plain number (digit separators '_'", id="csv-underscore-digits",
    ),
    pytest.param(
        {"d.csv": "1,\u0662,0\n".encode()}, "csv:d.csv", "d.csv",
        "line 1, column 2: '\u0662' is not a plain number", id="csv-non-ascii-digit",
    ),
    pytest.param(
        {"d.csv": b"a,b,label\n\n"}, "csv:d.csv", "d.csv", "empty dataset", id="csv-header-only"
    ),
    pytest.param({"d.csv": b""}, "csv:d.csv", "d.csv", "empty dataset", id="csv-empty-file"),
    pytest.param(
        {"d.csv": b"1\n2\n"}, "csv:d.csv", "d.csv", "only 1 column", id="csv-one-column"
    ),
    pytest.param(
        {"d.csv": b"a,b,y\n\n3,4,0\n1,2,-1\n"}, "csv:d.csv", "d.csv",
        "negative label -1 at line 4, column 3", id="csv-negative-label",
    ),
    pytest.param(
        {"d.csv": b"\xff\xfe1,2\n"}, "csv:d.csv", "d.csv", "not UTF-8 text", id="csv-not-utf8"
    ),
    pytest.param({}, "csv:gone.csv", "gone.csv", "file not found", id="csv-missing-file"),
]  # fmt: skip


@pytest.mark.parametrize(("files", "uri", "bad_file", "phrase"), BAD_INPUTS)
def test_bad_input_is_rejected_naming_file_and_problem(tmp_path, files, uri, bad_file, phrase):
    """It rejects each malformed file with a DatasetError naming the file and the problem."""
    write(tmp_path, files)
    with pytest.raises(DatasetError) as caught:
        load_dataset(uri, tmp_path, extra_search=())
    message = str(caught.value)
    assert bad_file in message
    assert phrase.lower() in message.lower()


NAN_FEATURE_INPUTS = [
    p
    for p in BAD_INPUTS
    if p.id.startswith("npz")
    and re.search("NaN or infinite feature|float32", p.values[3])
    and "target" not in p.id
]


@pytest.mark.parametrize(("files", "uri", "bad_file", "phrase"), NAN_FEATURE_INPUTS)
def test_npz_features_that_fail_at_load_are_refused_at_submit_too(tmp_path, files, uri, bad_file, phrase):
    """Each npz whose NaN, infinite or float32-overflowing features load refuses is refused by the
    submit-time check too, in the same words: file, array, value, sample and fix, less the count."""
    write(tmp_path, files)
    with pytest.raises(DatasetError) as at_load:
        load_dataset(uri, tmp_path, extra_search=())
    with pytest.raises(DatasetError) as at_submit:
        check_npz_features(tmp_path / bad_file, 1 << 20)
    assert re.sub(r" \(\d+ in all\)", "", str(at_load.value)) == str(at_submit.value)
    assert re.sub(r" \(\d+ in all\)", "", phrase).lower() in str(at_submit.value).lower()


def _with(x: np.ndarray, where: tuple[int, ...], value: float) -> np.ndarray:
    x = x.copy()
    x[where] = value
    return x


XF = np.arange(400, dtype=np.float32).reshape(100, 4)  # 16 bytes a sample
# (id, arrays, budget in bytes, what the submit check says: None when it finds nothing)
NPZ_CHECKS = [
    ("nan-in-first-sample", {"x_train": _with(XF, (0, 3), np.nan)}, 64,
     "(array x_train): NaN or infinite feature value nan at sample 0, feature 3; clean or impute them"),
    ("inf-at-the-budget-edge", {"x_train": _with(XF, (3, 3), np.inf)}, 64,
     "(array x_train): NaN or infinite feature value inf at sample 3, feature 3;"),
    ("inf-beyond-the-budget", {"x_train": _with(XF, (4, 0), np.inf)}, 64, None),
    ("lowest-bad-sample-is-named", {"x_train": _with(_with(XF, (9, 0), np.nan), (2, 1), -np.inf)}, 1600,
     "value -inf at sample 2, feature 1;"),
    ("fortran-order-lowest-sample", {"x_train": np.asfortranarray(_with(_with(XF, (50, 0), np.nan), (7, 3),
     np.inf))}, 1600, "value inf at sample 7, feature 3;"),
    ("fortran-order-counts-stored-bytes", {"x_train": np.asfortranarray(_with(XF, (0, 1), np.nan))}, 400,
     None),  # column 0 of every sample fills the 400 bytes
    ("float64-beyond-float32", {"x_train": _with(XF.astype(np.float64), (1, 2), 1e300)}, 1 << 20,
     "feature value 1e+300 at sample 1, feature 2 is too large for float32 (|x| > 3.4e38)"),
    ("float16-inf", {"x_train": _with(XF[:10].astype(np.float16), (5, 0), np.inf)}, 1 << 20,
     "value inf at sample 5, feature 0;"),
    ("big-endian", {"x_train": _with(XF.astype(">f4"), (6, 1), np.nan)}, 1 << 20,
     "value nan at sample 6, feature 1;"),
    ("images-flattened", {"x_train": _with(XF.reshape(100, 2, 2), (4, 1, 0), np.nan)}, 1 << 20,
     "value nan at sample 4, feature 2;"),
    ("nan-in-x-test", {"x_train": XF, "x_test": _with(XF[:5], (3, 2), np.nan)}, 64,
     "(array x_test): NaN or infinite feature value nan at sample 3, feature 2;"),
    ("integers-are-finite", {"x_train": XF.astype(np.int32)}, 1 << 20, None),
    ("clean-floats", {"x_train": XF}, 1 << 20, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arrays", "budget", "phrase"), [r[1:] for r in NPZ_CHECKS], ids=[r[0] for r in NPZ_CHECKS]
)
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_the_npz_feature_check_reads_only_its_budget(
    tmp_path, monkeypatch, arrays, budget, phrase, compressed
):
    """check_npz_features reads the first `budget` stored bytes of each float feature array, in
    chunks (here 24 bytes, so samples straddle them), and names the lowest bad sample it read."""
    monkeypatch.setattr(core, "CHECK_CHUNK_BYTES", 24)
    labels = {"y_train": np.zeros(len(arrays["x_train"]))}
    if "x_test" in arrays:
        labels["y_test"] = np.zeros(len(arrays["x_test"]))
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays, **labels)
    if phrase is None:
        assert check_npz_features(path, budget) is None
        return
    with pytest.raises(DatasetError) as caught:
        check_npz_features(path, budget)
    assert str(caught.value).startswith(f"{path} (array ")
    assert phrase in str(caught.value)


def test_a_bad_npz_feature_beyond_the_budget_is_still_refused_at_load(tmp_path):
    """What the submit check left unread is checked when the job loads the file, as before."""
    write(tmp_path, {"d.npz": npz(x_train=_with(XF, (90, 1), np.nan), y_train=np.zeros(100))})
    check_npz_features(tmp_path / "d.npz", 1024)  # samples 0-63 only
    with pytest.raises(
        DatasetError, match=r"\(array x_train\): NaN or infinite feature value nan at sample 90, "
    ):
        load_dataset("npz:d.npz", tmp_path, extra_search=())


IDX_NAN_IMAGES = _with(np.arange(4 * 2 * 2, dtype=np.float64).reshape(4, 2, 2), (2, 1, 0), np.nan)


@pytest.mark.parametrize(("type_code", "budget"), [(0x0D, 1 << 20), (0x0E, 1 << 20), (0x0D, 40)])
def test_float_idx_features_that_fail_at_load_are_refused_at_submit_too(tmp_path, type_code, budget):
    """A NaN in a float IDX image file (float32 or float64, big-endian) is refused by the submit-time
    probe in the words of the load, less the count, when it lies within the budget (sample 2 of
    16-byte float32 or 32-byte float64 samples: value 10, byte 40 or 80); beyond it, only the load
    refuses it."""
    write(tmp_path, idx_files(**{TRAIN_IMAGES: idx(IDX_NAN_IMAGES, type_code)}))
    with pytest.raises(DatasetError) as at_load:
        load_dataset("idx:d", tmp_path, extra_search=())
    within = budget > (2 * 4 + 2) * (4 if type_code == 0x0D else 8)
    if not within:
        probe_dataset("idx:d", tmp_path, extra_search=(), max_bytes=10**6, feature_check_bytes=budget)
        return
    with pytest.raises(DatasetError) as at_submit:
        probe_dataset("idx:d", tmp_path, extra_search=(), max_bytes=10**6, feature_check_bytes=budget)
    assert str(at_submit.value) == str(at_load.value).replace(" (1 in all)", "")
    assert str(at_submit.value).startswith(f"{tmp_path / 'd' / TRAIN_IMAGES}: NaN or infinite feature ")
    assert "value nan at sample 2, feature 2;" in str(at_submit.value)


def test_a_truncated_npz_feature_array_is_refused_by_the_check(tmp_path):
    """An .npy member shorter than its header declares is called so, naming the array."""
    member = npy(XF)[:-40]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x_train.npy", member)
        archive.writestr("y_train.npy", npy(np.zeros(100)))
    write(tmp_path, {"d.npz": buffer.getvalue()})
    with pytest.raises(DatasetError, match="array x_train is shorter than its header says; rewrite the file"):
        check_npz_features(tmp_path / "d.npz", 1 << 20)


def test_float_targets_carry_their_range_and_where_its_ends_are(tmp_path):
    """The smallest and largest regression target are named by sample (npz, per target column)
    or by line and column (CSV); class labels have no range."""
    targets = np.array([[0.5, 2.5], [-1.5, 0.0], [1.0, 0.25]])
    write(tmp_path, {"d.npz": npz(x_train=X3, y_train=targets), "c.npz": npz(x_train=X3, y_train=Y3)})
    (tmp_path / "d.csv").write_text("a,y\n1,0.5\n\n2,3.5\n3,-0.5\n")
    npz_range = load_dataset("npz:d.npz", tmp_path, extra_search=()).target_range
    assert (npz_range.low, npz_range.high) == (-1.5, 2.5)
    assert npz_range.low_at.endswith("d.npz (array y_train) at sample 1, target column 0")
    assert npz_range.high_at.endswith("d.npz (array y_train) at sample 0, target column 1")
    probed = probe_dataset("npz:d.npz", tmp_path, extra_search=(), max_bytes=10**6).target_range
    assert probed == npz_range
    csv_range = load_dataset("csv:d.csv", tmp_path, extra_search=()).target_range
    assert (csv_range.low, csv_range.high) == (-0.5, 3.5)
    assert csv_range.low_at.endswith("d.csv at line 5, column 2")
    assert csv_range.high_at.endswith("d.csv at line 4, column 2")
    assert load_dataset("npz:c.npz", tmp_path, extra_search=()).target_range is None


@pytest.fixture(scope="module")
def fashion(fashion_dir) -> Dataset:
    """Fashion-MNIST from the system copy (conftest's fashion_dir skips, or fails in CI)."""
    return load_dataset("fashion-mnist", Path("/nonexistent-data-root"), extra_search=[fashion_dir])


def test_fashion_mnist_loads_from_the_system_copy(fashion):
    """Fashion-MNIST loads as 60000/10000 flattened uint8 images with ten balanced classes."""
    assert fashion.x_train.shape == (60000, 784) and fashion.x_train.dtype == np.uint8
    assert fashion.x_test.shape == (10000, 784) and fashion.x_test.dtype == np.uint8
    assert fashion.y_train.dtype == np.int64 and fashion.num_classes == 10
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10
    assert fashion.y_train[:5].tolist() == [9, 0, 0, 3, 0]
    assert "/usr/share/datasets/fashion-mnist" in fashion.source


def test_gzipped_and_plain_idx_give_equal_arrays(fashion, fashion_dir, tmp_path):
    """Decompressed copies of the IDX files load to exactly the arrays of the gzipped ones."""
    for stem in NAMES.values():
        with gzip.open(fashion_dir / f"{stem}.gz") as src, (tmp_path / stem).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    plain = load_dataset(f"idx:{tmp_path}", tmp_path)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(plain, field), getattr(fashion, field)), field
    assert plain.num_classes == 10


def test_data_root_copy_is_searched_before_extra_search(tmp_path):
    """A fashion-mnist directory under data_root wins over the extra search paths."""
    write(tmp_path, idx_files("fashion-mnist"))
    dataset = load_dataset("fashion-mnist", tmp_path)
    assert dataset.x_train.shape == (4, 4)
    assert np.array_equal(dataset.x_train, IMAGES.reshape(4, 4))
    assert str(tmp_path / "fashion-mnist") in dataset.source


def test_missing_fashion_mnist_lists_places_and_fixes(tmp_path):
    """Without any copy, the error lists every directory tried and how to get the data."""
    write(tmp_path, idx_files("partial", **{NAMES["y_test"]: None}))
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", tmp_path, extra_search=[tmp_path / "partial"])
    message = str(caught.value)
    assert f"{tmp_path / 'fashion-mnist'} (no such directory)" in message
    assert f"{tmp_path / 'partial'} (missing t10k-labels-idx1-ubyte)" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "gradfleet fetch-data --dest" in message


def test_compression_is_detected_by_content_not_name(tmp_path):
    """A gzipped file under the plain name and a plain file under the .gz name both load."""
    files = idx_files(**{TRAIN_IMAGES: gzip.compress(idx(IMAGES)), TRAIN_LABELS: None})
    files["d/" + TRAIN_LABELS + ".gz"] = idx(LABELS)
    write(tmp_path, files)
    dataset = load_dataset("idx:d", tmp_path)
    assert np.array_equal(dataset.x_train, IMAGES.reshape(4, 4))
    assert dataset.y_train.tolist() == [0, 1, 2, 1]


def test_a_truncated_gzip_idx_file_is_called_truncated(tmp_path):
    """A cut-off .gz file (its last bytes are data, not a trailer) is reported truncated, at submit and at
    load, with the re-download advice; never as "trailing bytes" from a garbage trailer."""
    images = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)  # compresses poorly
    whole = gzip.compress(idx(images))
    assert struct.unpack("<I", whole[40000 - 4 : 40000])[0] > len(idx(images))  # the "trailer" is garbage
    write(tmp_path, {"d/" + TRAIN_IMAGES + ".gz": whole[:40000], "d/" + TRAIN_LABELS: idx(np.zeros(100))})
    path = tmp_path / "d" / (TRAIN_IMAGES + ".gz")
    with pytest.raises(DatasetError) as at_submit:
        probe_dataset("idx:d", tmp_path, extra_search=(), max_bytes=10**9)
    assert re.fullmatch(
        f"{re.escape(str(path))}: truncated file: its gzip data stops after \\d+ of the 78416 bytes that "
        "header dimensions 100x28x28 need \\(header included\\); re-create or re-download it .*",
        str(at_submit.value),
    )
    with pytest.raises(DatasetError) as at_load:
        load_dataset("idx:d", tmp_path)
    assert str(at_load.value) == (
        f"{path}: truncated file: its gzip data stops before the end-of-stream marker; re-create or "
        "re-download it (Fashion-MNIST: gradfleet fetch-data --dest DIR)"
    )


def test_a_gzip_idx_file_of_two_members_passes_the_size_check(tmp_path):
    """The trailer records only the last gzip member; the size check then decompresses to be sure."""
    data = idx(IMAGES)
    write(tmp_path, idx_files(**{TRAIN_IMAGES: gzip.compress(data[:10]) + gzip.compress(data[10:])}))
    assert probe_dataset("idx:d", tmp_path, extra_search=(), max_bytes=10**9).num_train == 4


def test_idx_without_test_pair_has_no_test_split(tmp_path):
    """An IDX directory with only the train pair loads with x_test and y_test None."""
    write(tmp_path, idx_files(**{TEST_IMAGES: None, NAMES["y_test"]: None}))
    dataset = load_dataset("idx:d", tmp_path)
    assert dataset.x_test is None and dataset.y_test is None
    assert dataset.num_classes == 3


def test_wider_idx_types_are_read_big_endian(tmp_path):
    """int16 and float64 IDX payloads are decoded big-endian into native arrays."""
    images = np.array([[[-300, 2]], [[7, 30000]]], dtype=np.int16)
    floats = np.array([[0.25, -1e10]])
    files = {
        TRAIN_IMAGES: idx(images, 0x0B),
        TRAIN_LABELS: idx([1, 0], 0x0C),
        TEST_IMAGES: idx(floats, 0x0E),
        NAMES["y_test"]: idx([2], 0x0C),
    }
    write(tmp_path, idx_files(**files))
    dataset = load_dataset("idx:d", tmp_path)
    assert dataset.x_train.dtype == np.int16 and dataset.x_train.tolist() == [[-300, 2], [7, 30000]]
    assert dataset.x_test.dtype == np.float32 and dataset.x_test.tolist() == [[0.25, -1e10]]
    assert dataset.y_train.tolist() == [1, 0] and dataset.num_classes == 3


def test_npz_roundtrip_flattens_images_and_keeps_uint8(tmp_path):
    """An npz of (n, 28, 28) uint8 images loads as (n, 784) uint8 with int64 labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 4, 4, 1], dtype=np.int32)
    write(tmp_path, {"set.npz": npz(x_train=images, y_train=labels, x_test=images[:2],
                                     y_test=labels[:2])})  # fmt: skip
    dataset = load_dataset("npz:set.npz", tmp_path)
    assert dataset.x_train.dtype == np.uint8 and dataset.x_train.shape == (5, 784)
    assert np.array_equal(dataset.x_train, images.reshape(5, 784))
    assert np.array_equal(dataset.x_test, images[:2].reshape(2, 784))
    assert dataset.y_train.dtype == np.int64 and dataset.y_train.tolist() == [3, 0, 4, 4, 1]
    assert dataset.num_classes == 5
    assert str(tmp_path / "set.npz") in dataset.source


def test_npz_floats_become_float32_and_whole_float_labels_are_classes(tmp_path):
    """Float64 features load as float32, and float labels that are whole numbers as classes."""
    write(tmp_path, {"f.npz": npz(x_train=X3 / 3, y_train=np.array([[2.0], [0.0], [1.0]]))})
    dataset = load_dataset("npz:f.npz", tmp_path)
    assert dataset.x_train.dtype == np.float32
    assert np.allclose(dataset.x_train, X3 / 3)
    assert dataset.y_train.dtype == np.int64 and dataset.y_train.tolist() == [2, 0, 1]
    assert dataset.num_classes == 3 and dataset.x_test is None


def test_npz_fractional_targets_are_regression(tmp_path):
    """Non-whole float targets load as float32 regression targets with num_classes 0."""
    targets = np.array([[0.5, 1.0], [2.0, -3.25], [0.0, 0.0]])
    write(tmp_path, {"r.npz": npz(x_train=X3, y_train=targets, x_test=X3, y_test=targets)})
    dataset = load_dataset("npz:r.npz", tmp_path)
    assert dataset.num_classes == 0
    assert dataset.y_train.dtype == np.float32 and dataset.y_train.tolist() == targets.tolist()
    assert dataset.y_test.shape == (3, 2)


def test_csv_roundtrip_with_header(tmp_path):
    """A CSV with a header row loads float32 features and int64 labels from the last column."""
    write(tmp_path, {"t.csv": b"height, weight ,class\n1.5,2,1\n\n-3,4.25,0\n7,8,2\n"})
    dataset = load_dataset("csv:t.csv", tmp_path)
    assert dataset.x_train.dtype == np.float32
    assert dataset.x_train.tolist() == [[1.5, 2.0], [-3.0, 4.25], [7.0, 8.0]]
    assert dataset.y_train.dtype == np.int64 and dataset.y_train.tolist() == [1, 0, 2]
    assert dataset.num_classes == 3 and dataset.x_test is None and dataset.y_test is None


def test_csv_with_a_utf8_byte_order_mark_loads(tmp_path):
    """A CSV saved by Excel (UTF-8 with a BOM) loads, and passes the submit-time prefix check."""
    write(tmp_path, {"bom.csv": "\ufeff0.126,2,1\n3,4,0\n".encode()})
    dataset = load_dataset("csv:bom.csv", tmp_path)
    assert dataset.x_train.tolist() == [[np.float32(0.126), 2.0], [3.0, 4.0]]
    assert dataset.y_train.tolist() == [1, 0]
    assert check_csv_prefix(tmp_path / "bom.csv", 1000) == 2


def test_csv_without_header_and_fractional_label_is_regression(tmp_path):
    """A headerless CSV whose last column has fractions loads as (n,) float32 targets."""
    write(tmp_path, {"r.csv": b"1,2,0.5\n3,4,1\n"})
    dataset = load_dataset(f"csv:{tmp_path / 'r.csv'}", tmp_path)
    assert dataset.x_train.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert dataset.y_train.dtype == np.float32 and dataset.y_train.tolist() == [0.5, 1.0]
    assert dataset.num_classes == 0


ROWS = b"".join(b"%d,%d,%d\n" % (i % 7, i % 5, i % 3) for i in range(100))  # 6 bytes a line
# (id, file, features found in its first 200 bytes or None, error phrase or None)
PREFIXES = [
    ("header-and-rows", b"a,b,label\n" + ROWS, 2, None),
    ("bad-row-in-prefix", b"1,2,0\n1,2\n" + ROWS, None, "line 2: ragged row"),
    ("nan-in-prefix", ROWS[:60] + b"1,inf,0\n" + ROWS, None, "line 11, column 2: 'inf' is not a finite"),
    ("not-utf8-in-prefix", b"\xff\xfe1,2\n" + ROWS, None, "not UTF-8 text"),
    ("bad-row-after-prefix", ROWS + b"1,x,0\n", 2, None),  # also: the line cut at byte 200 is skipped
    ("whole-small-file", b"1,2,3,0\n", 3, None),
    ("no-complete-line", b"0," * 150 + b"0\n", None, None),
    ("header-only", b"a,b\n", None, "empty dataset"),
    ("header-fills-the-prefix", b"a," * 150 + b"b\n" + ROWS, None, None),
]


@pytest.mark.parametrize(
    ("text", "features", "phrase"), [r[1:] for r in PREFIXES], ids=[r[0] for r in PREFIXES]
)
def test_a_csv_prefix_gets_the_row_checks_of_a_full_load(tmp_path, text, features, phrase):
    """check_csv_prefix parses only the complete lines in the first bytes of a CSV file, with the
    row checks load_csv makes, and gives its feature count."""
    (tmp_path / "d.csv").write_bytes(text)
    if phrase is None:
        assert check_csv_prefix(tmp_path / "d.csv", 200) == features
        return
    with pytest.raises(DatasetError, match=phrase) as caught:
        check_csv_prefix(tmp_path / "d.csv", 200)
    assert str(tmp_path / "d.csv") in str(caught.value)


def test_resolve_uri_joins_relative_paths_to_data_root(tmp_path):
    """Relative URI paths resolve under data_root; absolute ones inside it are kept."""
    root = tmp_path.resolve()
    assert resolve_uri("npz:sub/a.npz", tmp_path) == DatasetUri("npz", root / "sub/a.npz")
    assert resolve_uri(f"idx:{root}/abs/dir", tmp_path) == DatasetUri("idx", root / "abs/dir")
    assert resolve_uri("csv:sub/../b.csv", tmp_path) == DatasetUri("csv", root / "b.csv")
    assert resolve_uri(" fashion-mnist ", tmp_path) == DatasetUri("fashion-mnist", None)


# One row per way out of the data root: (id, uri, symlinks name -> target, what the error names).
ESCAPES = [
    ("dot-dot", "npz:../outside.npz", {}, None),
    ("dot-dot-deep", "npz:sub/../../outside.npz", {}, None),
    ("absolute", "npz:/etc/passwd", {}, None),
    ("symlinked-file", "npz:link.npz", {"link.npz": "../outside.npz"}, None),
    ("symlinked-dir", "idx:linkdir", {"linkdir": ".."}, None),
    ("nul-byte", "csv:a\x00b.csv", {}, None),
    ("symlinked-idx-file", "idx:d", {f"d/{TRAIN_IMAGES}": f"../../d/{TRAIN_IMAGES}"}, f"d/{TRAIN_IMAGES}"),
    ("symlinked-gz-idx-file", "idx:d", {f"d/{TRAIN_LABELS}.gz": "/etc/hostname"}, f"{TRAIN_LABELS}.gz"),
    ("symlinked-test-file", "idx:fashion-mnist",
     {f"fashion-mnist/{TEST_IMAGES}": f"../../d/{TEST_IMAGES}"}, f"fashion-mnist/{TEST_IMAGES}"),
]  # fmt: skip


@pytest.mark.parametrize(("uri", "links", "named"), [r[1:] for r in ESCAPES], ids=[r[0] for r in ESCAPES])
def test_paths_leaving_the_data_root_are_refused(tmp_path, uri, links, named):
    """It refuses a dataset path that leads outside the data root, whatever the route, also for a
    file inside an IDX directory: the loader checks every file it opens, not only the URI."""
    root = tmp_path / "root"
    write(root, idx_files("d") | idx_files("fashion-mnist"))
    write(tmp_path, idx_files("d"))
    (tmp_path / "outside.npz").write_bytes(npz(x_train=X3, y_train=Y3))
    for name, target in links.items():
        (root / name).unlink(missing_ok=True)
        if name.endswith(".gz"):
            (root / name.removesuffix(".gz")).unlink()
        (root / name).symlink_to(target)
    with pytest.raises(DatasetError) as caught:
        load_dataset(uri, root, extra_search=())
    message = str(caught.value)
    assert (named or repr(uri)) in message
    assert "outside the data root" in message or "unusable path" in message


@pytest.mark.parametrize("uri", ["mnist", "hdf5:x.h5", "npz:", "CSV:a.csv", ""])
def test_unknown_uri_lists_accepted_forms(tmp_path, uri):
    """An unknown or incomplete URI is rejected with every accepted form listed."""
    with pytest.raises(DatasetError) as caught:
        load_dataset(uri, tmp_path)
    message = str(caught.value)
    assert repr(uri) in message
    for form in ("fashion-mnist", "idx:DIR", "npz:FILE", "csv:FILE"):
        assert form in message


def test_dataset_error_is_a_picklable_value_error():
    """DatasetError is a ValueError and survives pickling with its message."""
    error = pickle.loads(pickle.dumps(DatasetError("f.csv: line 3: ragged row")))
    assert isinstance(error, ValueError)
    assert str(error) == "f.csv: line 3: ragged row"


# One row per kind of change the runner's cache must notice: (id, uri, files before, files after).
CHANGES = [
    ("csv-grows", "csv:d.csv", {"d.csv": b"1,2,0\n3,4,1\n"}, {"d.csv": b"1,2,0\n3,4,1\n5,6,2\n"}),
    ("csv-same-size", "csv:d.csv", {"d.csv": b"1,2,0\n3,4,1\n"}, {"d.csv": b"1,2,2\n3,4,1\n"}),
    ("npz-rewritten", "npz:d.npz", {"d.npz": npz(x_train=X3, y_train=Y3)},
     {"d.npz": npz(x_train=X3, y_train=Y3 + 1)}),
    ("idx-labels-only", "idx:d", idx_files(), idx_files(**{TRAIN_LABELS: idx([2, 1, 2, 1])})),
]  # fmt: skip


@pytest.mark.parametrize(("uri", "before", "after"), [r[1:] for r in CHANGES], ids=[r[0] for r in CHANGES])
def test_the_dataset_cache_reloads_a_changed_file(tmp_path, uri, before, after):
    """The runner's cache serves a dataset while its files are unchanged and reads it again once
    any of them changes size or modification time, so a job never trains on stale arrays."""
    cache = DatasetCache(ServerConfig(data_root=tmp_path))
    write(tmp_path, before)
    first = cache.load(uri)
    assert cache.load(uri) is first
    write(tmp_path, after)
    for name in after:  # a distinct modification time even on a coarse clock
        stat = (tmp_path / name).stat()
        os.utime(tmp_path / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = cache.load(uri)
    assert again is not first
    assert again.y_train.tolist() == load_dataset(uri, tmp_path).y_train.tolist() != first.y_train.tolist()


def test_the_dataset_cache_notices_a_fashion_mnist_copy_added_under_the_data_root(tmp_path):
    """fashion-mnist is located again on every load: a copy added under DATA_ROOT/fashion-mnist
    after the system copy was cached is used from then on."""
    system, root = tmp_path / "system", tmp_path / "root"
    write(system, idx_files("."))
    root.mkdir()
    cache = DatasetCache(ServerConfig(data_root=root, dataset_search=(system,)))
    first = cache.load("fashion-mnist")
    assert str(system) in first.source
    write(root, idx_files("fashion-mnist", **{TRAIN_LABELS: idx([2, 2, 2, 2])}))
    again = cache.load("fashion-mnist")
    assert str(root / "fashion-mnist") in again.source
    assert (first.y_train.tolist(), again.y_train.tolist()) == ([0, 1, 2, 1], [2, 2, 2, 2])


LIMIT = 3000
# (id, files, uri, bytes needed): declared by the header, or known only once a CSV is parsed (a
# 2,200-byte file, under the limit, whose arrays are not).
TOO_LARGE = [
    ("npz-header", {"big.npz": npz(x_train=np.zeros((100, 10)), y_train=np.zeros(100))}, "npz:big.npz",
     100 * 10 * 4 + 100 * 8),
    ("csv-parsed", {"big.csv": b"0,0,0,0,0,0,0,0,0,0,0\n" * 100}, "csv:big.csv", 100 * 10 * 4 + 100 * 8),
    ("csv-file", {"big.csv": b"0," * LIMIT + b"0\n"}, "csv:big.csv", 2 * LIMIT + 2),
]  # fmt: skip


@pytest.mark.parametrize(("files", "uri", "needs"), [r[1:] for r in TOO_LARGE], ids=[r[0] for r in TOO_LARGE])
def test_the_dataset_cache_refuses_a_dataset_over_the_size_limit(tmp_path, files, uri, needs):
    """Loading for a job checks --max-dataset-bytes too (a re-queued job skips admission): what the
    headers declare before reading, and the arrays in memory after parsing a CSV file."""
    write(tmp_path, files)
    cache = DatasetCache(ServerConfig(data_root=tmp_path, max_dataset_bytes=LIMIT))
    with pytest.raises(LimitExceeded) as caught:
        cache.load(uri)
    assert (
        f"needs {needs:,} bytes in memory; the limit is 3,000 (--max-dataset-bytes)" in caught.value.message
    )
