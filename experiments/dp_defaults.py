"""DP-safe defaults: the training, clipping and server settings a DP run gets when its spec
leaves them out (docs/dp-training.md gives the measurements behind each)."""

from __future__ import annotations

from typing import Any

__all__ = ["DP_ADAM_LEARNING_RATE", "DP_IMAGE_DEFAULTS", "DP_SERVER_DEFAULTS", "dp_defaults"]

#: DP-SGD on images. Measured (benchmarks/dp_convergence.py, 3 hospitals x 160 training
#: images at 90/10, epsilon 8): the issue's rising loss is clipping far below the gradient
#: norms. A fresh CNN's per-image gradient norm is 10-20, so with ``max_grad_norm`` 1 every
#: image is clipped to the same norm and a confidently right majority image pushes as hard
#: as a wrong minority one: the model is driven towards the majority class until the
#: minority's loss explodes (balanced data did not rise; neither did noise-free Adam). A
#: bound near the gradient norms (10) keeps the gradient's direction; with SGD the step and
#: the noise both scale with ``learning_rate * max_grad_norm``, so the learning rate is
#: small (0.005) and the same noise per step as the issue's run buys an unbiased gradient.
#: SGD with momentum 0.9 rather than Adam, whose per-coordinate step on a noise-dominated
#: gradient is a full ``lr`` whatever the signal. Batch 32: more steps per round than 64 at a
#: modest noise multiplier (1.1 at epsilon 8, 160 images, 8 rounds).
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

    The optimiser, its learning rate and SGD's clipping bound go together: a spec that sets
    a learning rate keeps the general default optimiser and bound (its rate was chosen for
    them); one that sets Adam without a rate gets Adam's DP rate and the general bound.

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
        training, privacy = out["training"], out["privacy"]
        # the optimiser, its learning rate and (for SGD) the clipping bound are one choice
        if "training.learning_rate" in explicit:
            del training["optimizer"], training["learning_rate"], privacy["max_grad_norm"]
        elif "training.optimizer" in explicit and optimizer != "sgd":
            del training["optimizer"], privacy["max_grad_norm"]
            training["learning_rate"] = DP_ADAM_LEARNING_RATE
    server: dict[str, Any] = {}
    if strategy == "fedavgm":
        server["server_learning_rate"] = 1.0 - server_momentum if private else 1.0
    elif private and strategy in DP_SERVER_DEFAULTS:
        server.update(DP_SERVER_DEFAULTS[strategy])
    if server:
        out["strategy"] = server
    return out
