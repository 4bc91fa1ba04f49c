"""A multi-layer perceptron whose parameters live in one flat vector.

Layer ``i`` maps ``a_{i-1}`` of shape ``(n, fan_in)`` to ``a_i = f_i(a_{i-1} @ W_i + b_i)`` of shape
``(n, fan_out)``, with ``a_0 = x``. The flat vector holds, layer after layer, ``W_i`` (row-major
``(fan_in, fan_out)``) followed by ``b_i`` ``(fan_out,)``. The loss is applied to ``a_L``.

Backward pass (``delta_i = dL/dz_i``, ``g`` the loss gradient with respect to ``a_L``)::

    delta_L = g * f_L'(z_L)
    dW_i = a_{i-1}.T @ delta_i          db_i = sum over rows of delta_i
    delta_{i-1} = (delta_i @ W_i.T) * f_{i-1}'(z_{i-1})      (not computed for the input)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._workspace import Workspace, WorkspaceCache
from .activations import get_activation
from .losses import count_correct, get_loss, prepare_targets

_SUPPORTED_PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Network:
    """Multi-layer perceptron of dense layers with all parameters in ONE flat vector.

    Layer ``i``'s weight is a ``(fan_in, fan_out)`` view and its bias a ``(fan_out,)`` view into the
    flat vector. Every computation runs in the dtype of the flat vector passed in (float32 by
    default, float64 also works). A network object caches per-batch-size buffers, so one object
    must not be used from two threads at once.
    """

    def __init__(self, layer_sizes: Sequence[int], activations: Sequence[str], loss: str) -> None:
        """``layer_sizes`` includes the input size, e.g. ``[784, 256, 128, 10]``;
        ``len(activations) == len(layer_sizes) - 1``; ``loss`` is one of ``LOSSES``."""
        sizes = tuple(int(size) for size in layer_sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"layer_sizes needs >= 2 positive sizes, got {list(layer_sizes)}")
        if len(activations) != len(sizes) - 1:
            raise ValueError(
                f"need {len(sizes) - 1} activations for layer_sizes {list(sizes)}, "
                f"got {len(activations)}: {list(activations)}"
            )
        self.layer_sizes = sizes
        self.activation_names = tuple(activations)
        self.loss_name = loss
        self._activations = tuple(get_activation(name) for name in activations)
        self._loss = get_loss(loss)
        self._offsets = _layer_offsets(sizes)
        self.num_params = self._offsets[-1][1] + sizes[-1]
        self._workspaces = WorkspaceCache(sizes[1:])

    @property
    def num_outputs(self) -> int:
        """Size of the last layer."""
        return self.layer_sizes[-1]

    def init_params(self, rng: np.random.Generator, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Return a new flat ``(num_params,)`` vector with zero biases and random weights.

        Weights are He-normal ``N(0, 2 / fan_in)`` for relu layers, else Glorot-uniform
        ``U(-limit, limit)`` with ``limit = sqrt(6 / (fan_in + fan_out))``.
        """
        dtype = np.dtype(dtype)
        if dtype not in _SUPPORTED_PARAM_DTYPES:
            raise ValueError(f"Unsupported parameter dtype: {dtype}; use float32 or float64")
        flat = np.zeros(self.num_params, dtype=dtype)
        for (weight, _), activation in zip(self._layer_views(flat), self._activations, strict=True):
            fan_in, fan_out = weight.shape
            if activation.name == "relu":
                rng.standard_normal(out=weight, dtype=dtype)
                weight *= math.sqrt(2.0 / fan_in)
            else:
                rng.random(out=weight, dtype=dtype)
                weight *= 2.0
                weight -= 1.0
                weight *= math.sqrt(6.0 / (fan_in + fan_out))
        return flat

    def named_parameters(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Return views into ``flat`` by name: ``{"layer_0_weight": (fan_in, fan_out),
        "layer_0_bias": (fan_out,), "layer_1_weight": ...}``."""
        named = {}
        for index, (weight, bias) in enumerate(self._layer_views(self._check_flat(flat))):
            named[f"layer_{index}_weight"] = weight
            named[f"layer_{index}_bias"] = bias
        return named

    def forward(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Return the network outputs ``a_L`` (logits when the last activation is identity),
        shape ``(n, num_outputs)``, for inputs ``x`` of shape ``(n, layer_sizes[0])``."""
        flat = self._check_flat(flat)
        x = self._convert_inputs(x, flat.dtype)
        workspace = Workspace.allocate(x.shape[0], self.layer_sizes[1:], flat.dtype)
        return self._forward(flat, x, workspace)

    def loss_and_grad(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray) -> float:
        """Write the SUM over samples of per-sample gradients into ``grad_out`` (overwritten) and
        return the SUM of per-sample losses.

        ``x``: ``(n, fan_in)``, any numeric dtype (converted to ``flat.dtype``); ``n`` may be 0.
        ``y``: integer labels ``(n,)``, or for mean squared error float targets ``(n, out)``
        (or ``(n,)`` when ``out == 1``). ``grad_out``: same shape and dtype as ``flat``.
        """
        return self.loss_grad_and_correct(flat, x, y, grad_out)[0]

    def loss_grad_and_correct(
        self, flat: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        """Like ``loss_and_grad``, and also return the number of rows with ``argmax == label``
        (0 for float targets)."""
        flat = self._check_flat(flat)
        self._check_grad_buffer(flat, grad_out)
        x = self._convert_inputs(x, flat.dtype)
        targets = prepare_targets(self._loss, y, x.shape[0], self.num_outputs, flat.dtype)
        if x.shape[0] == 0:
            grad_out.fill(0)
            return 0.0, 0
        workspace = self._workspaces.get(x.shape[0], flat.dtype)
        outputs = self._forward(flat, x, workspace)
        loss_sum = self._loss.function(outputs, targets, workspace.deltas[-1])
        correct = count_correct(outputs, targets)
        self._backward(flat, x, workspace, grad_out)
        return loss_sum, correct

    def evaluate(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Return ``(loss SUM, number of rows with argmax(output) == y)``; correct is 0 for float
        targets. Shapes as in ``loss_and_grad``."""
        flat = self._check_flat(flat)
        x = self._convert_inputs(x, flat.dtype)
        targets = prepare_targets(self._loss, y, x.shape[0], self.num_outputs, flat.dtype)
        if x.shape[0] == 0:
            return 0.0, 0
        workspace = Workspace.allocate(x.shape[0], self.layer_sizes[1:], flat.dtype)
        outputs = self._forward(flat, x, workspace)
        loss_sum = self._loss.function(outputs, targets, workspace.deltas[-1])
        return loss_sum, count_correct(outputs, targets)

    def _forward(self, flat: np.ndarray, x: np.ndarray, workspace: Workspace) -> np.ndarray:
        inputs = x
        layers = zip(
            self._layer_views(flat),
            self._activations,
            workspace.activations,
            workspace.scratch,
            strict=True,
        )
        for (weight, bias), activation, outputs, scratch in layers:
            np.matmul(inputs, weight, out=outputs)
            outputs += bias
            activation.forward(outputs, scratch)
            inputs = outputs
        return inputs

    def _backward(self, flat: np.ndarray, x: np.ndarray, workspace: Workspace, grad_out: np.ndarray) -> None:
        """Write all gradients into ``grad_out``; ``workspace.deltas[-1]`` must hold ``dL/da_L``."""
        weights = [weight for weight, _ in self._layer_views(flat)]
        grads = self._layer_views(grad_out)
        for index in reversed(range(len(weights))):
            delta = workspace.deltas[index]
            outputs = workspace.activations[index]
            self._activations[index].backward(delta, outputs, workspace.scratch[index])
            inputs = x if index == 0 else workspace.activations[index - 1]
            np.matmul(inputs.T, delta, out=grads[index][0])
            np.sum(delta, axis=0, out=grads[index][1])
            if index > 0:
                np.matmul(delta, weights[index].T, out=workspace.deltas[index - 1])

    def _layer_views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        views = []
        for (weight_start, bias_start), fan_in, fan_out in zip(
            self._offsets, self.layer_sizes[:-1], self.layer_sizes[1:], strict=True
        ):
            weight = flat[weight_start:bias_start].reshape(fan_in, fan_out)
            views.append((weight, flat[bias_start : bias_start + fan_out]))
        return views

    def _check_flat(self, flat: np.ndarray) -> np.ndarray:
        if not isinstance(flat, np.ndarray) or flat.shape != (self.num_params,):
            shape = getattr(flat, "shape", type(flat).__name__)
            raise ValueError(f"flat params must be an array of shape ({self.num_params},), got {shape}")
        if flat.dtype.kind != "f":
            raise ValueError(f"flat params must be floating point, got dtype {flat.dtype}")
        return flat

    def _check_grad_buffer(self, flat: np.ndarray, grad_out: np.ndarray) -> None:
        same = isinstance(grad_out, np.ndarray) and grad_out.shape == flat.shape
        if not same or grad_out.dtype != flat.dtype:
            description = getattr(grad_out, "shape", type(grad_out).__name__)
            raise ValueError(
                f"grad_out must be a {flat.dtype} array of shape {flat.shape}, "
                f"got {description} {getattr(grad_out, 'dtype', '')}"
            )

    def _convert_inputs(self, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ValueError(f"x must have shape (n, {self.layer_sizes[0]}), got {x.shape}")
        return x.astype(dtype, copy=False)


def _layer_offsets(layer_sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Return ``(weight_start, bias_start)`` in the flat vector for each layer."""
    offsets = []
    position = 0
    for fan_in, fan_out in itertools.pairwise(layer_sizes):
        offsets.append((position, position + fan_in * fan_out))
        position += fan_in * fan_out + fan_out
    return tuple(offsets)
