"""Optimizers against updates computed by hand from the published formulas."""

import tracemalloc

import numpy as np
import pytest

from workers.nn import OPTIMIZERS, SGD, Adam, Momentum, make_optimizer

TARGET = np.array([1.0, -2.0, 0.5])


def _quadratic_grad(params: np.ndarray) -> np.ndarray:
    """Gradient of 0.5 * |p - TARGET|^2."""
    return params - TARGET.astype(params.dtype)


def _run(optimizer, steps: int, lr: float, dtype=np.float64) -> np.ndarray:
    params = np.zeros(3, dtype=dtype)
    for _ in range(steps):
        optimizer.step(params, _quadratic_grad(params), lr)
    return params


def test_sgd_matches_hand_computed_updates() -> None:
    """SGD applies p -= lr * g each step."""
    expected = np.zeros(3)
    for _ in range(4):
        expected = expected - 0.1 * (expected - TARGET)
    np.testing.assert_allclose(_run(SGD(3, np.float64), 4, 0.1), expected, rtol=1e-15)


def test_momentum_matches_hand_computed_updates() -> None:
    """Momentum applies v = m v + g, p -= lr v."""
    params, velocity = np.zeros(3), np.zeros(3)
    for _ in range(5):
        velocity = 0.8 * velocity + (params - TARGET)
        params = params - 0.1 * velocity
    optimizer = Momentum(3, np.float64, momentum=0.8)
    np.testing.assert_allclose(_run(optimizer, 5, 0.1), params, rtol=1e-14)


def test_adam_matches_hand_computed_updates_with_bias_correction() -> None:
    """Adam follows Kingma & Ba: bias-corrected moments m/(1-b1^t), v/(1-b2^t)."""
    beta1, beta2, eps, lr = 0.8, 0.9, 1e-8, 0.05
    params, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t in range(1, 6):
        g = params - TARGET
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        params = params - lr * m_hat / (np.sqrt(v_hat) + eps)
    optimizer = Adam(3, np.float64, beta1=beta1, beta2=beta2, epsilon=eps)
    np.testing.assert_allclose(_run(optimizer, 5, lr), params, rtol=1e-13)


def test_adam_first_step_moves_each_parameter_by_lr() -> None:
    """After one Adam step every parameter moves by lr against its gradient's sign."""
    params = _run(Adam(3, np.float32), 1, 0.01, dtype=np.float32)
    np.testing.assert_allclose(params, 0.01 * np.sign(TARGET), rtol=1e-5)
    assert params.dtype == np.float32


def test_adam_flushes_subnormal_moments_to_zero() -> None:
    """Moment values below float32's smallest normal number become exactly 0 at a flush step."""
    optimizer = Adam(3, np.float32, flush_every=1)
    subnormal = np.float32(1e-40)
    optimizer.first_moment[:] = [subnormal, 1e-3, -subnormal]
    optimizer.second_moment[:] = [subnormal, 1e-6, 0.0]
    optimizer.step(np.zeros(3, np.float32), np.zeros(3, np.float32), 0.1)
    decayed_m, decayed_v = np.float32(1e-3) * np.float32(0.9), np.float32(1e-6) * np.float32(0.999)
    np.testing.assert_array_equal(optimizer.first_moment, [0.0, decayed_m, 0.0])
    np.testing.assert_array_equal(optimizer.second_moment, [0.0, decayed_v, 0.0])


def test_steps_allocate_no_parameter_sized_arrays() -> None:
    """A step of each optimizer on 1M float32 parameters allocates far less than one 4 MB array."""
    size = 1_000_000
    params, grad = np.zeros(size, np.float32), np.full(size, 0.5, np.float32)
    for kind in OPTIMIZERS:
        optimizer = make_optimizer(kind, size, np.float32)
        optimizer.step(params, grad, 0.01)
        tracemalloc.start()
        for _ in range(16):  # includes Adam's flush step
            optimizer.step(params, grad, 0.01)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 100_000, kind


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_state_dict_round_trip_continues_identically(kind: str) -> None:
    """An optimizer restored from state_dict takes bit-identical further steps."""
    original = make_optimizer(kind, 3, np.float32)
    params = _run(original, 3, 0.1, dtype=np.float32)
    restored = make_optimizer(kind, 3, np.float32)
    restored.load_state_dict(original.state_dict())
    other_params = params.copy()
    for _ in range(2):
        original.step(params, _quadratic_grad(params), 0.1)
        restored.step(other_params, _quadratic_grad(other_params), 0.1)
    assert np.array_equal(params, other_params)


def test_state_dict_holds_copies() -> None:
    """Stepping after state_dict leaves the returned arrays unchanged."""
    optimizer = Adam(3, np.float64)
    _run(optimizer, 1, 0.1)
    state = optimizer.state_dict()
    saved = state["first_moment"].copy()
    optimizer.step(np.zeros(3), np.ones(3), 0.1)
    assert np.array_equal(state["first_moment"], saved) and state["step_count"] == 1


def test_invalid_arguments_are_rejected() -> None:
    """Bad learning rates, shapes, kinds and hyperparameters raise ValueError naming them."""
    optimizer = SGD(3, np.float32)
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        optimizer.step(np.zeros(3, np.float32), np.zeros(3, np.float32), float("nan"))
    with pytest.raises(ValueError, match=r"grad must be float32 of shape \(3,\)"):
        optimizer.step(np.zeros(3, np.float32), np.zeros(4, np.float32), 0.1)
    with pytest.raises(ValueError, match="Unknown optimizer: 'lion'"):
        make_optimizer("lion", 3, np.float32)
    with pytest.raises(ValueError, match=r"Invalid hyperparameters for 'sgd': \['momentum'\]"):
        make_optimizer("sgd", 3, np.float32, momentum=0.9)
    with pytest.raises(ValueError, match=r"Invalid beta2: 1\.0"):
        make_optimizer("adam", 3, np.float32, beta2=1.0)


def test_make_optimizer_passes_hyperparameters() -> None:
    """make_optimizer builds the named class with the given hyperparameters."""
    optimizer = make_optimizer("momentum", 5, np.float64, momentum=0.5)
    assert isinstance(optimizer, Momentum) and optimizer.momentum == 0.5
    assert optimizer.velocity.shape == (5,) and optimizer.velocity.dtype == np.float64
