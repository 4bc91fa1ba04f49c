"""Optimizers against updates computed by hand from the published formulas."""

import tracemalloc

import numpy as np
import pytest

from workers.nn import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    RMSProp,
    clip_by_global_norm,
    make_optimizer,
)

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


# Decays fast enough that state left by a gradient that went to zero turns subnormal in ~130 steps.
_FAST_DECAY = {
    "momentum": {"momentum": 0.5},
    "nesterov": {"momentum": 0.5},
    "adam": {"beta1": 0.5, "beta2": 0.5},
    "adamw": {"beta1": 0.5, "beta2": 0.5, "weight_decay": 0.01},
    "rmsprop": {"rho": 0.5},
}


def _dead_unit_grad(params: np.ndarray, step: int) -> np.ndarray:
    """The quadratic's gradient on the first two entries; the last two get a gradient on the
    first step only, like a unit that dies, so their decaying state goes subnormal."""
    grad = np.zeros_like(params)
    grad[:2] = params[:2] - TARGET[:2].astype(params.dtype)
    grad[2:] = 1.0 if step == 0 else 0.0
    return grad


def _snapshot(optimizer, params: np.ndarray) -> list[bytes]:
    state = optimizer.state_dict()
    return [params.tobytes()] + [np.asarray(state[key]).tobytes() for key in sorted(state)]


def _resumes_identically(kind: str, forget_step_count: bool = False) -> bool:
    """Run 200 steps uninterrupted and, beside it, restored from state_dict after 120 (mid flush
    cycle); whether parameters and state stayed bit-identical after every step."""
    hyper = _FAST_DECAY.get(kind, {})
    original = make_optimizer(kind, 4, np.float32, **hyper)
    params = np.zeros(4, np.float32)
    for step in range(120):  # 120 % flush_every != 0
        original.step(params, _dead_unit_grad(params, step), 0.01)
    restored = make_optimizer(kind, 4, np.float32, **hyper)
    restored.load_state_dict(original.state_dict())
    if forget_step_count:
        restored.step_count = 0
    other = params.copy()
    for step in range(120, 200):
        original.step(params, _dead_unit_grad(params, step), 0.01)
        restored.step(other, _dead_unit_grad(other, step), 0.01)
        if _snapshot(original, params) != _snapshot(restored, other):
            return False
    return True


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(kind: str) -> None:
    """An optimizer restored from state_dict keeps parameters and state bit-identical to the
    uninterrupted one, through later flushes of subnormal state."""
    assert _resumes_identically(kind)


@pytest.mark.parametrize("kind", ["momentum", "nesterov", "rmsprop"])
def test_round_trip_check_catches_a_lost_step_count(kind: str) -> None:
    """Negative control: a restore that restarts the step count (so the flushes of subnormal
    state fall on other steps) fails the round-trip check."""
    assert not _resumes_identically(kind, forget_step_count=True)


def test_state_dict_holds_copies() -> None:
    """Stepping after state_dict leaves the returned arrays unchanged."""
    optimizer = Adam(3, np.float64)
    _run(optimizer, 1, 0.1)
    state = optimizer.state_dict()
    saved = state["first_moment"].copy()
    optimizer.step(np.zeros(3), np.ones(3), 0.1)
    assert np.array_equal(state["first_moment"], saved) and state["step_count"] == 1


def test_a_momentum_state_saved_without_its_step_count_still_loads() -> None:
    """Checkpoints written before step_count was saved ({"velocity"} only) resume with count 0,
    and a state with a key the optimizer does not have is refused naming the keys."""
    optimizer = Momentum(3, np.float64, momentum=0.5)
    optimizer.load_state_dict({"velocity": np.ones(3)})
    assert optimizer.step_count == 0 and optimizer.velocity.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"must have keys \['step_count', 'velocity'\]"):
        optimizer.load_state_dict({"velocity": np.ones(3), "first_moment": np.ones(3)})


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


def test_nesterov_follows_sutskevers_look_ahead_form() -> None:
    """Nesterov's parameters equal the look-ahead point theta + mu V of Sutskever et al. (2013):
    V = mu V - lr grad(theta + mu V), theta += V, for several steps."""
    mu, lr = 0.9, 0.1
    theta, velocity = np.zeros(3), np.zeros(3)
    for _ in range(6):
        look_ahead = theta + mu * velocity
        velocity = mu * velocity - lr * (look_ahead - TARGET)
        theta = theta + velocity
    expected = theta + mu * velocity
    np.testing.assert_allclose(_run(Nesterov(3, np.float64, momentum=mu), 6, lr), expected, rtol=1e-13)


def test_adamw_decouples_weight_decay_from_the_adaptive_step() -> None:
    """AdamW shrinks p by lr * wd * p outside Adam's moments (Loshchilov & Hutter, Algorithm 2)."""
    beta1, beta2, eps, lr, wd = 0.9, 0.99, 1e-8, 0.05, 0.1
    params, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t in range(1, 6):
        g = params - TARGET  # the gradient holds no decay term
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        params = params - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * params)
    optimizer = AdamW(3, np.float64, beta1=beta1, beta2=beta2, epsilon=eps, weight_decay=wd)
    np.testing.assert_allclose(_run(optimizer, 5, lr), params, rtol=1e-13)


def test_adam_weight_decay_is_l2_in_the_gradient() -> None:
    """Adam (not W) with weight decay equals Adam on the gradient g + wd * p."""
    wd = 0.1
    decayed = _run(Adam(3, np.float64, weight_decay=wd), 4, 0.05)
    manual, optimizer = np.zeros(3), Adam(3, np.float64)
    for _ in range(4):
        optimizer.step(manual, _quadratic_grad(manual) + wd * manual, 0.05)
    np.testing.assert_array_equal(decayed, manual)


def test_rmsprop_matches_hand_computed_updates() -> None:
    """RMSProp applies s = rho s + (1 - rho) g^2, p -= lr g / (sqrt(s) + eps)."""
    rho, eps, lr = 0.8, 1e-8, 0.01
    params, square = np.zeros(3), np.zeros(3)
    for _ in range(5):
        g = params - TARGET
        square = rho * square + (1 - rho) * g**2
        params = params - lr * g / (np.sqrt(square) + eps)
    optimizer = RMSProp(3, np.float64, rho=rho, epsilon=eps)
    np.testing.assert_allclose(_run(optimizer, 5, lr), params, rtol=1e-13)


def test_adagrad_with_weight_decay_matches_hand_computed_updates() -> None:
    """Adagrad with L2 decay applies g' = g + wd p, s += g'^2, p -= lr g' / (sqrt(s) + eps)."""
    eps, lr, wd = 1e-8, 0.1, 0.01
    params, total = np.zeros(3), np.zeros(3)
    for _ in range(5):
        g = params - TARGET + wd * params
        total = total + g**2
        params = params - lr * g / (np.sqrt(total) + eps)
    optimizer = Adagrad(3, np.float64, epsilon=eps, weight_decay=wd)
    np.testing.assert_allclose(_run(optimizer, 5, lr), params, rtol=1e-13)


def test_sgd_and_momentum_weight_decay_is_l2() -> None:
    """SGD with weight decay applies p -= lr (g + wd p); the caller's gradient is not written."""
    params, grad = np.ones(3), np.full(3, 0.5)
    SGD(3, np.float64, weight_decay=0.1).step(params, grad, 0.1)
    np.testing.assert_allclose(params, 1 - 0.1 * (0.5 + 0.1))
    assert np.array_equal(grad, np.full(3, 0.5))


def test_clip_by_global_norm_scales_only_long_gradients() -> None:
    """A gradient of norm 5 is scaled to norm 2; one of norm 1 is left alone; the norm is returned."""
    long, short = np.array([3.0, 4.0]), np.array([0.6, 0.8])
    assert clip_by_global_norm(long, 2.0) == 5.0
    np.testing.assert_allclose(long, [1.2, 1.6])
    assert clip_by_global_norm(short, 2.0) == pytest.approx(1.0)
    np.testing.assert_array_equal(short, [0.6, 0.8])


def test_every_decaying_state_is_flushed() -> None:
    """Momentum, Nesterov and RMSProp flush subnormal state to zero like Adam."""
    for optimizer, state in (
        (Momentum(2, np.float32, flush_every=1), "velocity"),
        (Nesterov(2, np.float32, flush_every=1), "velocity"),
        (RMSProp(2, np.float32, flush_every=1), "square_average"),
    ):
        getattr(optimizer, state)[:] = [1e-39, 1.0]
        optimizer.step(np.zeros(2, np.float32), np.zeros(2, np.float32), 0.1)
        values = getattr(optimizer, state)
        assert values[0] == 0.0 and values[1] > 0.5, type(optimizer).__name__


def test_weight_decay_steps_allocate_no_parameter_sized_arrays() -> None:
    """With weight decay every optimizer still allocates nothing parameter-sized per step."""
    size = 1_000_000
    params, grad = np.zeros(size, np.float32), np.full(size, 0.5, np.float32)
    for kind in OPTIMIZERS:
        optimizer = make_optimizer(kind, size, np.float32, weight_decay=1e-4)
        optimizer.step(params, grad, 0.01)
        tracemalloc.start()
        for _ in range(16):
            optimizer.step(params, grad, 0.01)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 100_000, kind


def _construction_bytes(kind: str, **hyper: float) -> int:
    tracemalloc.start()
    optimizer = make_optimizer(kind, 1_000_000, np.float32, **hyper)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del optimizer
    return size


def test_adamw_allocates_no_l2_buffer_for_its_decoupled_decay() -> None:
    """AdamW with weight decay holds no more memory than without, while Adam's L2 decay needs
    one parameter-sized buffer more."""
    assert _construction_bytes("adamw", weight_decay=0.1) - _construction_bytes("adamw") < 100_000
    assert _construction_bytes("adam", weight_decay=0.1) - _construction_bytes("adam") >= 4_000_000
