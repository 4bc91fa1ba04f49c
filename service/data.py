"""The dataset API under its agreed name; the implementation lives in `service.datasets`."""

from service.datasets import (
    ACCEPTED_FORMS,
    Dataset,
    DatasetError,
    DatasetUri,
    Normalization,
    apply_normalization,
    compute_normalization,
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
    "load_dataset",
    "resolve_uri",
]
