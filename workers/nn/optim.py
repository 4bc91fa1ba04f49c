"""Optimizers: pure update rules over flat parameter vectors, updating them in place.

Each optimizer owns state arrays of the parameters' shape and dtype plus one scratch buffer, all
allocated once, so a step allocates nothing parameter-sized. ``g`` is the gradient, ``lr`` the
learning rate given to ``step``, ``t`` the 1-based step count.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

StateDict = dict[str, np.ndarray | int | float]


class Optimizer:
    """Base class: validates the arguments of ``step`` and delegates the update to ``_step``."""

    def __init__(self, num_params: int, dtype: npt.DTypeLike) -> None:
        if num_params < 0:
            raise ValueError(f"Invalid num_params: {num_params}")
        self.num_params = int(num_params)
        self.dtype = np.dtype(dtype)
        self._scratch = np.empty(self.num_params, dtype=self.dtype)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Update ``params`` ``(num_params,)`` in place from ``grad`` (same shape and dtype)."""
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        expected = (self.num_params,)
        for name, array in (("params", params), ("grad", grad)):
            if array.shape != expected or array.dtype != self.dtype:
                raise ValueError(
                    f"{name} must be {self.dtype} of shape {expected}, "
                    f"got {array.dtype} of shape {array.shape}"
                )
        self._step(params, grad, lr)

    def state_dict(self) -> StateDict:
        """Return copies of the optimizer state (no hyperparameters), for checkpoints."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore state saved by ``state_dict`` of an optimizer of the same kind and size."""
        if state:
            raise ValueError(f"Unexpected optimizer state keys: {sorted(state)}")

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _load_array(self, state: StateDict, key: str, target: np.ndarray) -> None:
        if key not in state:
            raise ValueError(f"optimizer state is missing {key!r}; has {sorted(state)}")
        value = np.asarray(state[key])
        if value.shape != target.shape:
            raise ValueError(f"state {key!r} must have shape {target.shape}, got {value.shape}")
        np.copyto(target, value, casting="same_kind")


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        np.multiply(grad, lr, out=self._scratch)
        params -= self._scratch


class Momentum(Optimizer):
    """Heavy-ball momentum: ``v = momentum * v + g``; ``p -= lr * v`` (v starts at zero)."""

    def __init__(self, num_params: int, dtype: npt.DTypeLike, momentum: float = 0.9) -> None:
        super().__init__(num_params, dtype)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        self.momentum = momentum
        self.velocity = np.zeros(self.num_params, dtype=self.dtype)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.velocity *= self.momentum
        self.velocity += grad
        np.multiply(self.velocity, lr, out=self._scratch)
        params -= self._scratch

    def state_dict(self) -> StateDict:
        return {"velocity": self.velocity.copy()}

    def load_state_dict(self, state: StateDict) -> None:
        self._load_array(state, "velocity", self.velocity)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g**2``;
    ``p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + epsilon)``.

    Moment values below the dtype's smallest normal number are flushed to zero every
    ``flush_every`` steps: moments of gradients that stay zero decay geometrically into subnormals,
    and arithmetic on subnormals is several times slower on x86.
    """

    def __init__(
        self,
        num_params: int,
        dtype: npt.DTypeLike,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        flush_every: int = 16,
    ) -> None:
        super().__init__(num_params, dtype)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid {name}: {beta}")
        if epsilon <= 0 or flush_every < 1:
            raise ValueError(f"Invalid epsilon {epsilon} or flush_every {flush_every}")
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.flush_every = flush_every
        self.first_moment = np.zeros(self.num_params, dtype=self.dtype)
        self.second_moment = np.zeros(self.num_params, dtype=self.dtype)
        self.step_count = 0
        self._tiny_mask = np.empty(self.num_params, dtype=bool)

    def _step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.step_count += 1
        m, v, scratch = self.first_moment, self.second_moment, self._scratch
        m *= self.beta1
        np.multiply(grad, 1.0 - self.beta1, out=scratch)
        m += scratch
        v *= self.beta2
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.beta2
        v += scratch
        if self.step_count % self.flush_every == 0:
            self._flush_subnormals()
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2 = 1.0 - self.beta2**self.step_count
        np.divide(v, bias_correction2, out=scratch)
        np.sqrt(scratch, out=scratch)
        scratch += self.epsilon
        np.divide(m, scratch, out=scratch)
        scratch *= lr / bias_correction1
        params -= scratch

    def _flush_subnormals(self) -> None:
        """Set moment entries with ``|x| < finfo.tiny`` (subnormals) to exactly zero."""
        tiny = np.finfo(self.dtype).tiny
        for moment in (self.first_moment, self.second_moment):
            np.abs(moment, out=self._scratch)
            np.less(self._scratch, tiny, out=self._tiny_mask)
            np.copyto(moment, 0, where=self._tiny_mask)

    def state_dict(self) -> StateDict:
        return {
            "first_moment": self.first_moment.copy(),
            "second_moment": self.second_moment.copy(),
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: StateDict) -> None:
        self._load_array(state, "first_moment", self.first_moment)
        self._load_array(state, "second_moment", self.second_moment)
        if "step_count" not in state:
            raise ValueError(f"optimizer state is missing 'step_count'; has {sorted(state)}")
        self.step_count = int(state["step_count"])


_OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(kind: str, num_params: int, dtype: npt.DTypeLike, **hyper: float) -> Optimizer:
    """Build the optimizer ``kind`` (``"sgd"``, ``"momentum"`` or ``"adam"``) with ``hyper``
    passed to its constructor (e.g. ``momentum=0.9``, ``beta1=0.9``)."""
    try:
        optimizer_class = _OPTIMIZERS[kind]
    except KeyError:
        raise ValueError(f"Unknown optimizer: {kind!r}; expected one of {tuple(_OPTIMIZERS)}") from None
    try:
        return optimizer_class(num_params, dtype, **hyper)
    except TypeError as error:
        raise ValueError(f"Invalid hyperparameters for {kind!r}: {sorted(hyper)}") from error
