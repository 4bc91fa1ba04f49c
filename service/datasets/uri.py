"""Dataset URIs ("fashion-mnist", "idx:DIR", "npz:FILE", "csv:FILE") and loading by URI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.datasets.core import Dataset, DatasetError, confine
from service.datasets.idx import IDX_FILES, find_idx_file, load_idx_dir
from service.datasets.tabular import load_csv, load_npz

logger = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
DEFAULT_SEARCH = (Path("/usr/share/datasets/fashion-mnist"),)  # Debian's dataset-fashion-mnist
ACCEPTED_FORMS = (
    "fashion-mnist (DATA_ROOT/fashion-mnist, then the system copy)",
    "idx:DIR (train-/t10k- images and labels IDX files, gzipped or not)",
    "npz:FILE (arrays x_train, y_train, optional x_test, y_test)",
    "csv:FILE (numeric columns, label last, optional header row)",
)
# Each loader takes the URI's real path and the data root its files must stay in.
_LOADERS = {
    "idx": lambda path, root: load_idx_dir(path, require_test=False, source="IDX", root=root),
    "npz": lambda path, _root: load_npz(path),
    "csv": lambda path, _root: load_csv(path),
}


@dataclass(frozen=True)
class DatasetUri:
    """A parsed dataset URI: scheme fashion-mnist (path None), idx, npz or csv."""

    scheme: str
    path: Path | None


def resolve_uri(uri: str, data_root: Path) -> DatasetUri:
    """Parse `uri`; its path must lie inside `data_root` once `..` and symlinks are resolved.

    Relative paths are taken relative to `data_root`; absolute ones must point inside it too. The
    returned path is the real one (symlinks followed), so what is checked is what gets opened.
    Reads no file contents.
    """
    uri = uri.strip()
    if uri == FASHION_MNIST:
        return DatasetUri(FASHION_MNIST, None)
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in _LOADERS or not rest:
        raise DatasetError(
            f"dataset URI {uri!r}: unknown or incomplete form; accepted forms: " + "; ".join(ACCEPTED_FORMS)
        )
    return DatasetUri(scheme, confine(Path(rest), data_root, f"dataset URI {uri!r}"))


def dataset_location(uri: str, data_root: Path, *, extra_search: Sequence[Path] = DEFAULT_SEARCH) -> Path:
    """Where the dataset `uri` is read from right now: its real path, or for fashion-mnist the first
    directory holding the four files. Caches key on it, so a copy added under the data root while
    the server runs is used instead of the one found before. Reads no file contents."""
    resolved = resolve_uri(uri, data_root)
    if resolved.path is not None:
        return resolved.path
    return fashion_mnist_dir([data_root / FASHION_MNIST, *extra_search])


def load_dataset(uri: str, data_root: Path, *, extra_search: Sequence[Path] = DEFAULT_SEARCH) -> Dataset:
    """Load the dataset `uri` names (see ACCEPTED_FORMS); every problem is a DatasetError.

    For fashion-mnist, `data_root/fashion-mnist` is searched first, then each of `extra_search`.
    """
    resolved = resolve_uri(uri, data_root)
    if resolved.path is None:
        dataset = _load_fashion_mnist([data_root / FASHION_MNIST, *extra_search])
    else:
        dataset = _LOADERS[resolved.scheme](resolved.path, data_root)
    logger.info(
        "loaded %s: %d train / %s test samples, %d features, %d classes",
        dataset.source,
        len(dataset.x_train),
        "no" if dataset.x_test is None else len(dataset.x_test),
        dataset.num_features,
        dataset.num_classes,
    )
    return dataset


def _load_fashion_mnist(candidates: Sequence[Path]) -> Dataset:
    return load_idx_dir(fashion_mnist_dir(candidates), require_test=True, source="Fashion-MNIST")


def fashion_mnist_dir(candidates: Sequence[Path]) -> Path:
    """The first of `candidates` holding all four Fashion-MNIST IDX files."""
    looked = []
    for directory in candidates:
        if not directory.is_dir():
            looked.append(f"{directory} (no such directory)")
            continue
        missing = [stem for stem in IDX_FILES.values() if find_idx_file(directory, stem) is None]
        if not missing:
            return directory
        looked.append(f"{directory} (missing {', '.join(missing)})")
    raise DatasetError(
        "fashion-mnist: the four IDX files (train-images-idx3-ubyte[.gz] and friends) were not "
        f"found; looked in: {'; '.join(looked)}. Install them with "
        "`apt-get install dataset-fashion-mnist`, or download them with "
        f"`gradfleet fetch-data --dest DIR` where DIR is {candidates[0]}"
    )
