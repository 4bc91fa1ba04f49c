"""Pure-numpy backprop engine: networks, losses, optimizers, schedules and micro-shard reduction.

Imports numpy and the standard library only.
"""

from .activations import ACTIVATIONS
from .init import INITIALIZERS
from .losses import LOSSES, REGRESSION_LOSSES
from .metrics import add_sums, summarize
from .microshards import (
    ReductionBuffers,
    assign_microshards,
    full_batch_step_gradient,
    microshard_bounds,
    shard_gradients,
    tree_nodes,
    tree_reduce,
)
from .network import Network
from .optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    Optimizer,
    RMSProp,
    clip_by_global_norm,
    make_optimizer,
)
from .schedules import SCHEDULES, make_schedule

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "LOSSES",
    "OPTIMIZERS",
    "REGRESSION_LOSSES",
    "SCHEDULES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Momentum",
    "Nesterov",
    "Network",
    "Optimizer",
    "RMSProp",
    "ReductionBuffers",
    "add_sums",
    "assign_microshards",
    "clip_by_global_norm",
    "full_batch_step_gradient",
    "make_optimizer",
    "make_schedule",
    "microshard_bounds",
    "shard_gradients",
    "summarize",
    "tree_nodes",
    "tree_reduce",
]
