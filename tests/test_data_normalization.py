"""Input normalization: offset and scale fitted on the training set, applied as float32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.datasets import Normalization, apply_normalization, compute_normalization, normalization


def test_scale_maps_pixels_to_unit_interval():
    """Method "scale" has offset 0 and scale 1/255, so 0..255 pixels become 0..1."""
    x = np.array([[0, 51, 255], [255, 102, 0]], dtype=np.uint8)
    norm = compute_normalization(x, "scale")
    assert norm.offset.dtype == np.float32 and norm.offset.tolist() == [0.0, 0.0, 0.0]
    assert norm.scale.dtype == np.float32 and np.all(norm.scale == np.float32(1 / 255))
    assert np.allclose(apply_normalization(x, norm), [[0.0, 0.2, 1.0], [1.0, 0.4, 0.0]])


def test_none_is_the_identity_in_float32():
    """Method "none" leaves values unchanged and only converts them to float32."""
    x = np.array([[-2.5, 7.0]], dtype=np.float64)
    out = apply_normalization(x, compute_normalization(x, "none"))
    assert out.dtype == np.float32 and out.tolist() == [[-2.5, 7.0]]


def test_standardize_matches_float64_mean_and_std_across_chunks(monkeypatch):
    """Chunked "standardize" gives the float64 per-feature mean and 1/std of the whole set."""
    monkeypatch.setattr(normalization, "_ROWS_PER_CHUNK", 7)  # 50 rows -> 8 chunks, last partial
    x = np.random.default_rng(1).integers(0, 256, size=(50, 4), dtype=np.uint8)
    norm = compute_normalization(x, "standardize")
    expected = x.astype(np.float64)
    assert np.allclose(norm.offset, expected.mean(axis=0), rtol=1e-6)
    assert np.allclose(norm.scale, 1 / expected.std(axis=0), rtol=1e-6)


def test_standardize_stays_accurate_with_a_large_offset():
    """A tiny spread on top of a huge offset still gives the right std (no cancellation)."""
    x = 1e8 + np.array([[0.0], [1.0], [2.0], [3.0]])
    norm = compute_normalization(x, "standardize")
    assert norm.offset.tolist() == [np.float32(1e8 + 1.5)]
    assert np.isclose(norm.scale[0], 1 / np.sqrt(1.25), rtol=1e-6)


def test_constant_feature_gets_scale_one():
    """A feature with zero spread keeps scale 1 and is centred to exactly 0."""
    x = np.array([[0.1, 5.0], [0.1, 7.0], [0.1, 9.0]])
    norm = compute_normalization(x, "standardize")
    assert norm.scale[0] == 1.0
    out = apply_normalization(x, norm)
    assert out[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert np.allclose(out[:, 1], [-1.2247449, 0.0, 1.2247449])


def test_apply_converts_before_arithmetic_and_leaves_input_alone():
    """uint8 input below the offset goes negative instead of wrapping, and x is not modified."""
    x = np.array([[0, 200]], dtype=np.uint8)
    norm = Normalization(np.float32([10, 100]), np.float32([0.5, 0.25]))
    out = apply_normalization(x, norm)
    assert out.dtype == np.float32 and out.tolist() == [[-5.0, 25.0]]
    assert x.tolist() == [[0, 200]]


def test_standardize_on_fashion_mnist_matches_numpy(fashion_dir):
    """On the real 60000x784 uint8 training set the chunked statistics match numpy's."""
    from service.datasets import load_dataset

    x = load_dataset("fashion-mnist", fashion_dir, extra_search=[fashion_dir]).x_train
    norm = compute_normalization(x, "standardize")
    mean = x.mean(axis=0, dtype=np.float64)
    assert np.allclose(norm.offset, mean, rtol=1e-6)
    assert norm.offset[0] == pytest.approx(0.0008)  # the top-left pixel is almost always 0
    out = apply_normalization(x[:1000], norm)
    assert out.shape == (1000, 784) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("x", "method", "phrase"),
    [
        pytest.param(np.zeros((2, 3)), "zscore", "unknown normalization method", id="method"),
        pytest.param(np.zeros((0, 3)), "scale", "shape (n>0, features)", id="empty"),
        pytest.param(np.zeros(3), "scale", "shape (n>0, features)", id="one-dimensional"),
    ],
)
def test_compute_rejects_bad_input(x, method, phrase):
    """An unknown method or a non-2-D or empty training set is a ValueError saying which."""
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        compute_normalization(x, method)


def test_apply_rejects_a_feature_count_mismatch():
    """Applying a normalization fitted on 3 features to 2-feature data is a ValueError."""
    norm = compute_normalization(np.ones((2, 3)), "none")
    with pytest.raises(ValueError, match="for 3 features"):
        apply_normalization(np.ones((4, 2)), norm)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(2, 40), st.integers(1, 6)),
        elements=st.integers(0, 255),
    )
)
def test_standardized_training_data_has_zero_mean_and_unit_std(x):
    """Standardized training features have mean 0, and std 1 unless the feature is constant."""
    out = apply_normalization(x, compute_normalization(x, "standardize")).astype(np.float64)
    assert np.allclose(out.mean(axis=0), 0.0, atol=1e-4)
    constant = np.ptp(x, axis=0) == 0
    assert np.allclose(out.std(axis=0)[~constant], 1.0, atol=1e-4)
    assert np.all(out[:, constant] == 0.0)
