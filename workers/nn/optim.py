"""Optimizers: pure update rules over flat parameter vectors, updating them in place.

Each optimizer owns state arrays of the parameters' shape and dtype plus scratch buffers, all
allocated once, so a step allocates nothing parameter-sized. ``g`` is the gradient, ``lr`` the
learning rate given to ``step``, ``t`` the 1-based step count, ``wd`` the weight decay.

Weight decay is L2 regularisation, ``g <- g + wd * p``, for every optimizer except AdamW, whose
decay is decoupled from the gradient (Loshchilov & Hutter, 2019): ``p <- p - lr * wd * p``.
State that decays geometrically (moments, velocities) is flushed to zero below the dtype's smallest
normal number every ``flush_every`` steps: gradients that stay zero otherwise leave subnormals
behind, and arithmetic on subnormals is several times slower on x86.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

StateDict = dict[str, np.ndarray | int | float]


class Optimizer:
    """Base class: validates ``step``'s arguments, applies L2 decay and delegates to ``_step``."""

    decoupled_decay = False  # True: ``_step`` applies the weight decay itself (AdamW), not as L2

    def __init__(
        self, num_params: int, dtype: npt.DTypeLike, weight_decay: float = 0.0, flush_every: int = 16
    ) -> None:
        if num_params < 0:
            raise ValueError(f"Invalid num_params: {num_params}")
        _check_finite_at_least("weight_decay", weight_decay, 0.0)
        if flush_every < 1:
            raise ValueError(f"Invalid flush_every: {flush_every}; must be >= 1")
        self.num_params = int(num_params)
        self.dtype = np.dtype(dtype)
        self.weight_decay = float(weight_decay)
        self.flush_every = flush_every
        self.step_count = 0
        self._scratch = np.empty(self.num_params, dtype=self.dtype)
        l2_decay = weight_decay and not self.decoupled_decay
        self._decayed = np.empty(self.num_params, dtype=self.dtype) if l2_decay else None
        self._tiny_mask = np.empty(self.num_params, dtype=bool)  # for the subnormal flush

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``params`` ``(num_params,)`` in place from ``grad`` (same shape and dtype; not
        written)."""
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        expected = (self.num_params,)
        for name, array in (("params", params), ("grad", grad)):
            if array.shape != expected or array.dtype != self.dtype:
                raise ValueError(
                    f"{name} must be {self.dtype} of shape {expected}, "
                    f"got {array.dtype} of shape {array.shape}"
                )
        self.step_count += 1
        self._step(params, self._with_l2(params, grad), lr)
        decaying = self._decaying_state()
        if decaying and self.step_count % self.flush_every == 0:
            self._flush_subnormals(decaying)

    def state_dict(self) -> StateDict:
        """Return copies of the state arrays and ``step_count`` (no hyperparameters), for
        checkpoints; the count matters beyond Adam's bias correction, since it times the flushes."""
        arrays = {name: array.copy() for name, array in self._state_arrays().items()}
        return arrays | {"step_count": self.step_count}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore state saved by ``state_dict`` of an optimizer of the same kind and size."""
        targets = self._state_arrays()
        expected = set(targets) | {"step_count"}
        # Momentum and Nesterov checkpoints written before the count was saved lack it; they
        # resumed from 0 then, and still do.
        if set(state) | {"step_count"} != expected:
            raise ValueError(f"optimizer state must have keys {sorted(expected)}; has {sorted(state)}")
        for key, target in targets.items():
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(f"state {key!r} must have shape {target.shape}, got {value.shape}")
            np.copyto(target, value, casting="same_kind")
        self.step_count = int(state.get("step_count", 0))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's state arrays by name (the live arrays, not copies)."""
        return {}

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _decaying_state(self) -> tuple[np.ndarray, ...]:
        """State arrays that shrink geometrically when the gradient is zero."""
        return ()

    def _with_l2(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self._decayed is None:
            return grad
        np.multiply(params, self.weight_decay, out=self._decayed)
        self._decayed += grad
        return self._decayed

    def _flush_subnormals(self, arrays: tuple[np.ndarray, ...]) -> None:
        """Set entries with ``|x| < finfo.tiny`` (subnormals) to exactly zero."""
        tiny = np.finfo(self.dtype).tiny
        for array in arrays:
            np.abs(array, out=self._scratch)
            np.less(self._scratch, tiny, out=self._tiny_mask)
            np.copyto(array, 0, where=self._tiny_mask)


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        np.multiply(grad, lr, out=self._scratch)
        params -= self._scratch


class Momentum(Optimizer):
    """Heavy-ball momentum: ``v = momentum * v + g``; ``p -= lr * v`` (v starts at zero)."""

    def __init__(self, num_params: int, dtype: npt.DTypeLike, momentum: float = 0.9, **base) -> None:
        super().__init__(num_params, dtype, **base)
        _check_unit_interval("momentum", momentum)
        self.momentum = momentum
        self.velocity = np.zeros(self.num_params, dtype=self.dtype)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.velocity *= self.momentum
        self.velocity += grad
        np.multiply(self.velocity, lr, out=self._scratch)
        params -= self._scratch

    def _decaying_state(self) -> tuple[np.ndarray, ...]:
        return (self.velocity,)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"velocity": self.velocity}


class Nesterov(Momentum):
    """Nesterov momentum in the form of Bengio et al. (2013), as PyTorch's ``nesterov=True``:
    ``v = momentum * v + g``; ``p -= lr * (g + momentum * v)``.

    ``p`` is Sutskever's look-ahead point ``theta + momentum * V`` with ``V = -lr * v``, so the
    gradient is always taken where the momentum step is about to land.
    """

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.velocity *= self.momentum
        self.velocity += grad
        np.multiply(self.velocity, self.momentum, out=self._scratch)
        self._scratch += grad
        self._scratch *= lr
        params -= self._scratch


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g**2``;
    ``p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + epsilon)``.

    Computed as ``p -= (lr sqrt(1 - b2**t) / (1 - b1**t)) * m / (sqrt(v) + epsilon sqrt(1 - b2**t))``,
    the same value in two fewer passes over the parameters.
    """

    def __init__(
        self,
        num_params: int,
        dtype: npt.DTypeLike,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        **base,
    ) -> None:
        super().__init__(num_params, dtype, **base)
        _check_unit_interval("beta1", beta1)
        _check_unit_interval("beta2", beta2)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"Invalid epsilon: {epsilon}; must be > 0")
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.first_moment = np.zeros(self.num_params, dtype=self.dtype)
        self.second_moment = np.zeros(self.num_params, dtype=self.dtype)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        m, v, scratch = self.first_moment, self.second_moment, self._scratch
        m *= self.beta1
        np.multiply(grad, 1.0 - self.beta1, out=scratch)
        m += scratch
        v *= self.beta2
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.beta2
        v += scratch
        correction1 = 1.0 - self.beta1**self.step_count
        root_correction2 = math.sqrt(1.0 - self.beta2**self.step_count)
        np.sqrt(v, out=scratch)
        scratch += self.epsilon * root_correction2
        np.divide(m, scratch, out=scratch)
        scratch *= lr * root_correction2 / correction1
        params -= scratch

    def _decaying_state(self) -> tuple[np.ndarray, ...]:
        return (self.first_moment, self.second_moment)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"first_moment": self.first_moment, "second_moment": self.second_moment}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019):
    ``p -= lr * wd * p`` from the parameters before the step, then Adam's update from ``g`` alone."""

    decoupled_decay = True

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        if self.weight_decay:
            params *= 1.0 - lr * self.weight_decay
        super()._step(params, grad, lr)


class RMSProp(Optimizer):
    """RMSProp (Hinton, 2012): ``s = rho s + (1 - rho) g**2``; ``p -= lr g / (sqrt(s) + epsilon)``."""

    def __init__(
        self, num_params: int, dtype: npt.DTypeLike, rho: float = 0.9, epsilon: float = 1e-8, **base
    ) -> None:
        super().__init__(num_params, dtype, **base)
        _check_unit_interval("rho", rho)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"Invalid epsilon: {epsilon}; must be > 0")
        self.rho, self.epsilon = rho, epsilon
        self.square_average = np.zeros(self.num_params, dtype=self.dtype)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        s, scratch = self.square_average, self._scratch
        s *= self.rho
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.rho
        s += scratch
        _divided_step(params, grad, s, self.epsilon, lr, scratch)

    def _decaying_state(self) -> tuple[np.ndarray, ...]:
        return (self.square_average,)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"square_average": self.square_average}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011): ``s += g**2``; ``p -= lr g / (sqrt(s) + epsilon)``."""

    def __init__(self, num_params: int, dtype: npt.DTypeLike, epsilon: float = 1e-8, **base) -> None:
        super().__init__(num_params, dtype, **base)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"Invalid epsilon: {epsilon}; must be > 0")
        self.epsilon = epsilon
        self.square_sum = np.zeros(self.num_params, dtype=self.dtype)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        np.multiply(grad, grad, out=self._scratch)
        self.square_sum += self._scratch
        _divided_step(params, grad, self.square_sum, self.epsilon, lr, self._scratch)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"square_sum": self.square_sum}


def _divided_step(
    params: np.ndarray, grad: np.ndarray, squares: np.ndarray, epsilon: float, lr: float, scratch: np.ndarray
) -> None:
    """``p -= lr g / (sqrt(squares) + epsilon)``."""
    np.sqrt(squares, out=scratch)
    scratch += epsilon
    np.divide(grad, scratch, out=scratch)
    scratch *= lr
    params -= scratch


def clip_by_global_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm``; return the norm before.

    ``grad *= max_norm / norm`` when ``norm > max_norm`` (Pascanu et al., 2013); untouched otherwise.
    """
    _check_finite_at_least("max_norm", max_norm, 0.0)
    norm = math.sqrt(float(np.dot(grad, grad)))
    if norm > max_norm and math.isfinite(norm):
        grad *= np.asarray(max_norm / norm, dtype=grad.dtype)
    return norm


_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSProp,
    "adagrad": Adagrad,
}
OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZERS)


def make_optimizer(kind: str, num_params: int, dtype: npt.DTypeLike, **hyper: float) -> Optimizer:
    """Build the optimizer ``kind`` (one of ``OPTIMIZERS``) with ``hyper`` passed to its
    constructor (e.g. ``momentum=0.9``, ``beta1=0.9``, ``weight_decay=1e-4``)."""
    try:
        optimizer_class = _OPTIMIZERS[kind]
    except KeyError:
        raise ValueError(f"Unknown optimizer: {kind!r}; expected one of {OPTIMIZERS}") from None
    try:
        return optimizer_class(num_params, dtype, **hyper)
    except TypeError as error:
        raise ValueError(f"Invalid hyperparameters for {kind!r}: {sorted(hyper)}") from error


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value}; must be in [0, 1)")


def _check_finite_at_least(name: str, value: float, low: float) -> None:
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"Invalid {name}: {value}; must be finite and >= {low}")
