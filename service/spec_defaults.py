"""Job spec defaults: `with_defaults` fills every field a job file may leave out.

A filled spec is what the coordinator validates, stores and trains: hidden layers get ReLU and the
output layer identity, initializers follow the activation, the optimizer and its schedule get their
usual hyperparameters, and recovery its checkpoint interval and retry budgets. An explicit value,
0 in an optional field included, is kept (validation decides whether it is allowed).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from gradfleet.v1 import coordinator_pb2 as pb

MAX_DEFAULT_MICRO_SHARDS = 16
DEFAULT_BATCH_SIZE = 256
# Options that only some kinds use; validation refuses a value other than these with another kind.
LOSS_OPTION_DEFAULTS = {"label_smoothing": 0.0, "huber_delta": 1.0}
LEAKY_RELU_SLOPE = 0.01
OPTIMIZER_DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "rho": 0.9}
SCHEDULE_DEFAULTS = {
    "gamma": 0.1,
    "step_epochs": 1,
    "min_learning_rate": 0.0,
    "pct_start": 0.3,
    "div_factor": 25.0,
    "final_div_factor": 1e4,
}


def with_defaults(spec: pb.JobSpec) -> pb.JobSpec:
    """Return a copy with every unset field filled; an explicit 0 in an optional field stays."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.name = out.name or "job"
    _default(out, num_workers=2, batch_size=DEFAULT_BATCH_SIZE, epochs=10)
    # Micro-shards of about 64 samples: smaller ones make the per-shard matmuls inefficient.
    _default(out, micro_shards=max(1, min(MAX_DEFAULT_MICRO_SHARDS, out.batch_size // 64)))
    if out.dataset.preprocessing == pb.PREPROCESSING_UNSPECIFIED:
        out.dataset.preprocessing = pb.SCALE
    if out.loss == pb.LOSS_UNSPECIFIED:
        out.loss = pb.SOFTMAX_CROSS_ENTROPY
    for i, layer in enumerate(out.layers):
        if layer.activation == pb.ACTIVATION_UNSPECIFIED:
            layer.activation = pb.IDENTITY if i == len(out.layers) - 1 else pb.RELU
        _fill_layer(layer)
    _default(out, **LOSS_OPTION_DEFAULTS, eval_top_k=5)
    _fill_optimizer(out.optimizer)
    _fill_recovery(out)
    return out


def fit_default_batch(request: pb.JobSpec, num_train: int | None) -> tuple[pb.JobSpec, str]:
    """`with_defaults(request)`, except that a batch_size left out is at most the training set's
    `num_train` samples (one batch per epoch), with a note for the job's message saying so ("" when
    nothing changed). An explicit batch_size stays, for validation to refuse if it is too large."""
    spec = with_defaults(request)
    if request.HasField("batch_size") or num_train is None or spec.batch_size <= num_train:
        return spec, ""
    fitted = pb.JobSpec()
    fitted.CopyFrom(request)
    fitted.batch_size = num_train  # micro_shards, if left out too, follows it
    note = (
        f"batch_size not set: using {num_train}, the whole training set, as the default "
        f"{DEFAULT_BATCH_SIZE} is larger"
    )
    return with_defaults(fitted), note


_RELU_LIKE = (pb.RELU, pb.LEAKY_RELU, pb.ELU, pb.GELU, pb.SOFTPLUS)


def _fill_layer(layer: pb.LayerSpec) -> None:
    if layer.init == pb.INITIALIZER_UNSPECIFIED:
        layer.init = pb.HE_NORMAL if layer.activation in _RELU_LIKE else pb.GLOROT_UNIFORM
    if layer.activation == pb.LEAKY_RELU:
        _default(layer, slope=LEAKY_RELU_SLOPE)
    _default(layer, dropout=0.0)


DEFAULT_CHECKPOINT_EVERY_STEPS = 500


def _fill_recovery(spec: pb.JobSpec) -> None:
    _default(spec, checkpoint_every_steps=DEFAULT_CHECKPOINT_EVERY_STEPS, max_worker_restarts=3)
    _default(spec, rollback_lr_factor=0.5, max_rollbacks=3)
    if spec.on_divergence == pb.DIVERGENCE_POLICY_UNSPECIFIED:
        spec.on_divergence = pb.FAIL


def _fill_optimizer(opt: pb.OptimizerSpec) -> None:
    if opt.kind == pb.OPTIMIZER_UNSPECIFIED:
        opt.kind = pb.ADAM
    if not opt.HasField("learning_rate"):  # an explicit 0 stays, for validation to refuse
        opt.learning_rate = 0.001 if opt.kind in (pb.ADAM, pb.ADAMW) else 0.01
    # Filled whatever the kind, so a reader never sees a silent 0.0 for a hyperparameter.
    _default(opt, **OPTIMIZER_DEFAULTS, weight_decay=0.0, clip_norm=0.0)
    if opt.schedule.kind == pb.SCHEDULE_UNSPECIFIED:
        opt.schedule.kind = pb.CONSTANT
    _default(opt.schedule, **SCHEDULE_DEFAULTS, warmup_steps=0)


def _default(message: Message, **values: Any) -> None:
    for name, value in values.items():
        if not message.HasField(name):
            setattr(message, name, value)
