"""DP-safe defaults: the training, clipping and server settings a DP run gets when its spec
leaves them out (docs/dp-training.md gives the measurements behind each)."""

from __future__ import annotations

from typing import Any

__all__ = ["DP_ADAM_LEARNING_RATE", "DP_IMAGE_DEFAULTS", "DP_SERVER_DEFAULTS", "dp_defaults"]

#: DP-SGD on images. Adam normalises every coordinate of a noise-dominated gradient to a
#: full step, so with DP noise each weight random-walks by ``lr`` per step and the training
#: loss rises round after round (issue 11: 0.77 -> 1.17); SGD with momentum 0.9 averages
#: the noise instead. A small learning rate because the per-image gradient norm is large
#: (10-20 at the start), so every gradient is clipped and ``lr * max_grad_norm`` is the step.
#: Batch 32: on a 160-image hospital more steps at a lower noise multiplier per step learned
#: faster than 64 at epsilon 8, and fewer, noisier steps at 16.
DP_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {"optimizer": "sgd", "learning_rate": 0.005, "batch_size": 32, "local_epochs": 1},
    "privacy": {"max_grad_norm": 10.0},
}

#: The learning rate of a DP image run that chose Adam but no learning rate: small enough
#: that Adam's per-coordinate steps on noise do not add up within a run's few rounds.
DP_ADAM_LEARNING_RATE = 2e-4

#: Server optimisers under DP. FedAvgM as an exponential average of the rounds' updates
#: (``server_learning_rate = 1 - server_momentum``): the noise of successive rounds averages
#: out instead of being amplified ten-fold (Flower's learning rate 1.0 with momentum 0.9
#: took steps ten times FedAvg's). FedAdam/FedYogi with ``tau`` above the noise of a
#: round's update, so a coordinate that carries only noise is not scaled up to a full step.
DP_SERVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "fedadam": {"tau": 0.01, "server_learning_rate": 0.01},
    "fedyogi": {"tau": 0.01, "server_learning_rate": 0.01},
}


def dp_defaults(*, private: bool, imaging: bool, strategy: str, server_momentum: float,
                explicit: set[str] | frozenset[str] = frozenset(), optimizer: str = "adam") -> dict[str, dict[str, Any]]:
    """Per spec section, the values a run gets for the fields its spec did not set.

    The optimiser and its learning rate go together: a spec that sets only a learning rate
    keeps the general default optimiser (its rate was chosen for it), one that sets only
    the optimiser gets that optimiser's DP learning rate.

    Args:
        private: DP is on (``privacy.enabled``).
        imaging: The data are images.
        strategy: ``strategy.name``.
        server_momentum: ``strategy.server_momentum`` (FedAvgM's learning rate follows it).
        explicit: The fields the spec sets, as ``section.field``.
        optimizer: ``training.optimizer`` as the spec has it.

    Returns:
        ``{section: {field: value}}``; the caller applies only the fields the spec left out.
    """
    out: dict[str, dict[str, Any]] = {}
    if private and imaging:
        out = {section: dict(values) for section, values in DP_IMAGE_DEFAULTS.items()}
        training = out["training"]
        if "training.learning_rate" in explicit:
            training.pop("optimizer")
        elif "training.optimizer" in explicit:
            training.pop("optimizer")
            if optimizer == "adam":
                training["learning_rate"] = DP_ADAM_LEARNING_RATE
    server: dict[str, Any] = {}
    if strategy == "fedavgm":
        server["server_learning_rate"] = 1.0 - server_momentum if private else 1.0
    elif private and strategy in DP_SERVER_DEFAULTS:
        server.update(DP_SERVER_DEFAULTS[strategy])
    if server:
        out["strategy"] = server
    return out
