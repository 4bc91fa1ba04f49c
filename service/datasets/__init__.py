"""Dataset loading: URIs, IDX/npz/CSV readers, validation, and input normalization."""

from service.datasets.core import Dataset, DatasetError
from service.datasets.normalization import (
    Normalization,
    apply_normalization,
    compute_normalization,
)
from service.datasets.uri import (
    ACCEPTED_FORMS,
    DatasetUri,
    dataset_location,
    load_dataset,
    resolve_uri,
)

__all__ = [
    "ACCEPTED_FORMS",
    "Dataset",
    "DatasetError",
    "DatasetUri",
    "Normalization",
    "apply_normalization",
    "compute_normalization",
    "dataset_location",
    "load_dataset",
    "resolve_uri",
]
