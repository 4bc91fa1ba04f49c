"""A multi-layer perceptron whose parameters live in one flat vector.

Layer ``i`` maps ``a_{i-1}`` of shape ``(n, fan_in)`` to ``a_i = f_i(a_{i-1} @ W_i + b_i)`` of shape
``(n, fan_out)``, with ``a_0 = x``. The flat vector holds, layer after layer, ``W_i`` (row-major
``(fan_in, fan_out)``) followed by ``b_i`` ``(fan_out,)``. The loss is applied to ``a_L``.
With dropout rate ``p_i`` on layer ``i``, in training only, the next layer reads
``a_i * m_i`` with ``m_i`` 0 (probability ``p_i``) or ``1 / (1 - p_i)`` (inverted dropout).

Backward pass (``delta_i = dL/dz_i``, ``g`` the loss gradient with respect to ``a_L``)::

    delta_L = g * f_L'(z_L)
    dW_i = a_{i-1}.T @ delta_i          db_i = sum over rows of delta_i
    delta_{i-1} = ((delta_i @ W_i.T) * m_{i-1}) * f_{i-1}'(z_{i-1})   (not computed for the input)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._workspace import LayerBuffers, Workspace, WorkspaceCache
from .activations import DEFAULT_LEAKY_SLOPE, get_activation
from .init import initialize, resolve_initializer
from .losses import REGRESSION_LOSSES, count_correct, get_loss, prepare_targets
from .metrics import Sums, metric_sums

_SUPPORTED_PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Network:
    """Multi-layer perceptron of dense layers with all parameters in ONE flat vector.

    Layer ``i``'s weight is a ``(fan_in, fan_out)`` view and its bias a ``(fan_out,)`` view into the
    flat vector. Every computation runs in the dtype of the flat vector passed in (float32 by
    default, float64 also works). A network object caches per-batch-size buffers, so one object
    must not be used from two threads at once.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        activations: Sequence[str],
        loss: str,
        *,
        slopes: Sequence[float] | None = None,
        dropout: Sequence[float] | None = None,
        initializers: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        huber_delta: float = 1.0,
    ) -> None:
        """``layer_sizes`` includes the input size, e.g. ``[784, 256, 128, 10]``; one entry per
        layer in ``activations`` and, when given, ``slopes`` (leaky_relu), ``dropout`` (rates in
        ``[0, 1)``) and ``initializers`` (``INITIALIZERS``); ``loss`` is one of ``LOSSES``."""
        sizes = tuple(int(size) for size in layer_sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"layer_sizes needs >= 2 positive sizes, got {list(layer_sizes)}")
        num_layers = len(sizes) - 1
        slopes = _per_layer("slopes", slopes, num_layers, DEFAULT_LEAKY_SLOPE)
        self.dropout = tuple(float(p) for p in _per_layer("dropout", dropout, num_layers, 0.0))
        if any(not 0.0 <= p < 1.0 for p in self.dropout):
            raise ValueError(f"dropout rates must be in [0, 1), got {list(self.dropout)}")
        self.layer_sizes = sizes
        self.activation_names = tuple(_per_layer("activations", activations, num_layers, None))
        self.loss_name = loss
        self._activations = tuple(
            get_activation(name, slope) for name, slope in zip(activations, slopes, strict=True)
        )
        inits = _per_layer("initializers", initializers, num_layers, "auto")
        self.initializers = tuple(
            resolve_initializer(init, name) for init, name in zip(inits, activations, strict=True)
        )
        self._loss = get_loss(loss, label_smoothing=label_smoothing, huber_delta=huber_delta)
        self._offsets = _layer_offsets(sizes)
        self.num_params = self._offsets[-1][1] + sizes[-1]
        self._buffers = LayerBuffers(
            fan_outs=sizes[1:],
            saves_input=tuple(activation.saves_input for activation in self._activations),
            has_dropout=tuple(p > 0 for p in self.dropout),
        )
        self._workspaces = WorkspaceCache(self._buffers)

    @property
    def num_outputs(self) -> int:
        """Size of the last layer."""
        return self.layer_sizes[-1]

    @property
    def has_dropout(self) -> bool:
        """Whether any layer drops units in training."""
        return any(self._buffers.has_dropout)

    def init_params(self, rng: np.random.Generator, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Return a new flat ``(num_params,)`` vector with zero biases and random weights drawn
        layer by layer with each layer's initialiser (see ``init.py``)."""
        dtype = np.dtype(dtype)
        if dtype not in _SUPPORTED_PARAM_DTYPES:
            raise ValueError(f"Unsupported parameter dtype: {dtype}; use float32 or float64")
        flat = np.zeros(self.num_params, dtype=dtype)
        for (weight, _), name in zip(self._layer_views(flat), self.initializers, strict=True):
            initialize(weight, name, rng)
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
        shape ``(n, num_outputs)``, for inputs ``x`` of shape ``(n, layer_sizes[0])``; no dropout."""
        flat = self._check_flat(flat)
        x = self._convert_inputs(x, flat.dtype)
        workspace = Workspace.allocate(x.shape[0], self._buffers, flat.dtype)
        return self._forward(flat, x, workspace, None)

    def loss_and_grad(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        grad_out: np.ndarray,
        dropout_rng: np.random.Generator | None = None,
    ) -> float:
        """Write the SUM over samples of per-sample gradients into ``grad_out`` (overwritten) and
        return the SUM of per-sample losses.

        ``x``: ``(n, fan_in)``, any numeric dtype (converted to ``flat.dtype``); ``n`` may be 0.
        ``y``: integer labels ``(n,)``, or for losses taking float targets ``(n, out)`` (or
        ``(n,)`` when ``out == 1``). ``grad_out``: same shape and dtype as ``flat``.
        ``dropout_rng``: draws the dropout masks; None turns dropout off.
        """
        return self.loss_grad_and_correct(flat, x, y, grad_out, dropout_rng)[0]

    def loss_grad_and_correct(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        grad_out: np.ndarray,
        dropout_rng: np.random.Generator | None = None,
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
        outputs = self._forward(flat, x, workspace, dropout_rng)
        loss_sum = self._loss.function(outputs, targets, workspace.deltas[-1])
        correct = count_correct(outputs, targets)
        self._backward(flat, x, workspace, grad_out, dropout_rng is not None)
        return loss_sum, correct

    def evaluate(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Return ``(loss SUM, number of rows with argmax(output) == y)``; correct is 0 for float
        targets. Shapes as in ``loss_and_grad``; no dropout."""
        loss_sum, sums = self.evaluate_sums(flat, x, y, top_k=1)
        return loss_sum, int(sums["correct"])

    def evaluate_sums(
        self, flat: np.ndarray, x: np.ndarray, y: np.ndarray, top_k: int = 5
    ) -> tuple[float, Sums]:
        """Return ``(loss SUM, metric_sums)`` for ``metrics.summarize``; no dropout.

        ``top_k`` is capped at the number of outputs."""
        flat = self._check_flat(flat)
        x = self._convert_inputs(x, flat.dtype)
        targets = prepare_targets(self._loss, y, x.shape[0], self.num_outputs, flat.dtype)
        workspace = Workspace.allocate(x.shape[0], self._buffers, flat.dtype)
        outputs = self._forward(flat, x, workspace, None)
        loss_sum = self._loss.function(outputs, targets, workspace.deltas[-1]) if len(x) else 0.0
        multi_label = self._loss.name == "binary_cross_entropy"
        regression = self._loss.name in REGRESSION_LOSSES
        k = min(top_k, self.num_outputs)
        return loss_sum, metric_sums(outputs, targets, k, multi_label=multi_label, regression=regression)

    def _forward(
        self, flat: np.ndarray, x: np.ndarray, workspace: Workspace, rng: np.random.Generator | None
    ) -> np.ndarray:
        inputs = x
        for index, (weight, bias) in enumerate(self._layer_views(flat)):
            outputs = workspace.activations[index]
            np.matmul(inputs, weight, out=outputs)
            outputs += bias
            activation = self._activations[index]
            if activation.saves_input:
                np.copyto(workspace.saved[index], outputs)
            activation.forward(outputs, workspace.scratch[index])
            inputs = outputs
            if rng is not None and self.dropout[index] > 0:
                inputs = self._drop(index, outputs, workspace, rng)
        return inputs

    def _drop(
        self, index: int, outputs: np.ndarray, workspace: Workspace, rng: np.random.Generator
    ) -> np.ndarray:
        """Write ``outputs * mask`` into ``dropped[index]`` with a fresh inverted-dropout mask."""
        mask, dropped = workspace.masks[index], workspace.dropped[index]
        rate = self.dropout[index]
        rng.random(out=mask, dtype=mask.dtype)
        np.greater_equal(mask, rate, out=mask)
        mask *= 1.0 / (1.0 - rate)
        np.multiply(outputs, mask, out=dropped)
        return dropped

    def _backward(
        self, flat: np.ndarray, x: np.ndarray, workspace: Workspace, grad_out: np.ndarray, dropped: bool
    ) -> None:
        """Write all gradients into ``grad_out``; ``workspace.deltas[-1]`` must hold ``dL/da_L``.

        Overwrites the activations (the activation backward may use them as scratch)."""
        weights = [weight for weight, _ in self._layer_views(flat)]
        grads = self._layer_views(grad_out)
        for index in reversed(range(len(weights))):
            delta = workspace.deltas[index]
            uses_mask = dropped and self.dropout[index] > 0
            if uses_mask:
                delta *= workspace.masks[index]
            self._activation_backward(index, delta, workspace)
            inputs = x if index == 0 else self._layer_input(index, workspace, dropped)
            np.matmul(inputs.T, delta, out=grads[index][0])
            np.sum(delta, axis=0, out=grads[index][1])
            if index > 0:
                np.matmul(delta, weights[index].T, out=workspace.deltas[index - 1])

    def _activation_backward(self, index: int, delta: np.ndarray, workspace: Workspace) -> None:
        activation = self._activations[index]
        outputs, scratch = workspace.activations[index], workspace.scratch[index]
        if activation.saves_input:
            activation.backward(delta, outputs, scratch, workspace.saved[index])
        else:
            activation.backward(delta, outputs, scratch)

    def _layer_input(self, index: int, workspace: Workspace, dropped: bool) -> np.ndarray:
        previous = index - 1
        if dropped and self.dropout[previous] > 0:
            return workspace.dropped[previous]
        return workspace.activations[previous]

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


def _per_layer(name: str, values: Sequence | None, num_layers: int, default: object) -> list:
    if values is None:
        return [default] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"need {num_layers} {name} (one per layer), got {len(values)}: {list(values)}")
    return list(values)


def _layer_offsets(layer_sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Return ``(weight_start, bias_start)`` in the flat vector for each layer."""
    offsets = []
    position = 0
    for fan_in, fan_out in itertools.pairwise(layer_sizes):
        offsets.append((position, position + fan_in * fan_out))
        position += fan_in * fan_out + fan_out
    return tuple(offsets)
