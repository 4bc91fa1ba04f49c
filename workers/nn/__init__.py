"""Pure-numpy backprop engine: networks, losses, optimizers, schedules and micro-shard reduction.

Imports numpy and the standard library only.
"""

from .activations import ACTIVATIONS
from .losses import LOSSES
from .microshards import (
    assign_microshards,
    full_batch_step_gradient,
    microshard_bounds,
    shard_gradients,
    tree_nodes,
    tree_reduce,
)
from .network import Network
from .optim import SGD, Adam, Momentum, Optimizer, make_optimizer
from .schedules import SCHEDULES, make_schedule

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "SCHEDULES",
    "SGD",
    "Adam",
    "Momentum",
    "Network",
    "Optimizer",
    "assign_microshards",
    "full_batch_step_gradient",
    "make_optimizer",
    "make_schedule",
    "microshard_bounds",
    "shard_gradients",
    "tree_nodes",
    "tree_reduce",
]
