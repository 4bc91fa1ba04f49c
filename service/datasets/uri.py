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
    return fashion_mnist_dir(data_root, extra_search).directory


def load_dataset(uri: str, data_root: Path, *, extra_search: Sequence[Path] = DEFAULT_SEARCH) -> Dataset:
    """Load the dataset `uri` names (see ACCEPTED_FORMS); every problem is a DatasetError.

    For fashion-mnist, `data_root/fashion-mnist` is searched first, then each of `extra_search`.
    """
    resolved = resolve_uri(uri, data_root)
    if resolved.path is None:
        found = fashion_mnist_dir(data_root, extra_search)
        dataset = load_idx_dir(found.directory, require_test=True, source="Fashion-MNIST", root=found.root)
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


@dataclass(frozen=True)
class FashionMnistCopy:
    """A directory holding the four Fashion-MNIST files, and the root they must stay in: the data
    root for DATA_ROOT/fashion-mnist (a client may place links there), None for the operator's
    search folders (--dataset-search), which the server's configuration vouches for."""

    directory: Path
    root: Path | None


# The last partial DATA_ROOT/fashion-mnist warned about, per directory: warn once per state, not
# on every submit.
_warned_partial: dict[Path, tuple[str, ...]] = {}


def fashion_mnist_dir(data_root: Path, extra_search: Sequence[Path]) -> FashionMnistCopy:
    """The first directory holding all four Fashion-MNIST IDX files: DATA_ROOT/fashion-mnist, then
    each of `extra_search`. DATA_ROOT/fashion-mnist is refused, not skipped, when it is a symlink
    leading out of the data root, as `idx:` refuses it; nothing is read there before that check."""
    local = confine(
        Path(FASHION_MNIST),
        data_root,
        f"dataset fashion-mnist: {data_root / FASHION_MNIST}",
        fix=f"replace the link with a folder holding the files (remove it, then gradfleet fetch-data "
        f"--dest {data_root / FASHION_MNIST}), or remove it to use the server's own copy",
    )
    looked, partial = [], []
    for directory in (local, *extra_search):
        if not directory.is_dir():
            looked.append(f"{directory} (no such directory)")
            continue
        missing = tuple(stem for stem in IDX_FILES.values() if find_idx_file(directory, stem) is None)
        if not missing:
            _warn_skipped(partial, directory)
            return FashionMnistCopy(directory, data_root if directory == local else None)
        looked.append(f"{directory} (missing {', '.join(missing)})")
        partial.append((directory, missing))
    raise DatasetError(
        "fashion-mnist: the four IDX files (train-images-idx3-ubyte[.gz] and friends) were not "
        f"found; looked in: {'; '.join(looked)}. Install them with "
        "`apt-get install dataset-fashion-mnist`, or download them with "
        f"`gradfleet fetch-data --dest DIR` where DIR is {data_root / FASHION_MNIST}"
    )


def _warn_skipped(partial: list[tuple[Path, tuple[str, ...]]], used: Path) -> None:
    """A WARNING for each incomplete copy passed over for `used`: a half-finished copy under the data
    root would otherwise be ignored without a word while the job trains on another copy."""
    for directory, missing in partial:
        if _warned_partial.get(directory) == missing:
            continue
        _warned_partial[directory] = missing
        logger.warning(
            "fashion-mnist: %s lacks %s (with or without .gz), so %s is used instead; add the missing "
            "files (gradfleet fetch-data --dest %s) or remove the folder",
            directory,
            ", ".join(missing),
            used,
            directory,
        )
