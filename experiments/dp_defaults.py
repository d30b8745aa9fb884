"""DP-safe defaults: the training, clipping and server settings a DP run gets when its spec
leaves them out (docs/dp-training.md gives the measurements behind each)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DP_ADAM_LEARNING_RATE", "DP_SERVER_DEFAULTS", "dp_defaults"]

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


def dp_defaults(*, private: bool, modality_defaults: Mapping[str, Mapping[str, Any]], strategy: str, server_momentum: float,
                explicit: set[str] | frozenset[str] = frozenset(), optimizer: str = "adam") -> dict[str, dict[str, Any]]:
    """Per spec section, the values a run gets for the fields its spec did not set.

    The optimiser, its learning rate and SGD's clipping bound go together: a spec that sets
    a learning rate keeps the general default optimiser and bound (its rate was chosen for
    them); one that sets Adam without a rate gets Adam's DP rate and the general bound.

    Args:
        private: DP is on (``privacy.enabled``).
        modality_defaults: The data section's DP defaults per spec section (``{}``: none), such as
            :data:`training.imaging.spec.DP_IMAGE_DEFAULTS`.
        strategy: ``strategy.name``.
        server_momentum: ``strategy.server_momentum`` (FedAvgM's learning rate follows it).
        explicit: The fields the spec sets, as ``section.field``.
        optimizer: ``training.optimizer`` as the spec has it.

    Returns:
        ``{section: {field: value}}``; the caller applies only the fields the spec left out.
    """
    out: dict[str, dict[str, Any]] = {}
    if private and modality_defaults:
        out = {section: dict(values) for section, values in modality_defaults.items()}
        training, privacy = out.setdefault("training", {}), out.setdefault("privacy", {})
        # the optimiser, its learning rate and (for SGD) the clipping bound are one choice
        if "training.learning_rate" in explicit:
            for values, key in ((training, "optimizer"), (training, "learning_rate"), (privacy, "max_grad_norm")):
                values.pop(key, None)
        elif "training.optimizer" in explicit and optimizer != "sgd":
            training.pop("optimizer", None)
            privacy.pop("max_grad_norm", None)
            training["learning_rate"] = DP_ADAM_LEARNING_RATE
    server: dict[str, Any] = {}
    if strategy == "fedavgm":
        server["server_learning_rate"] = 1.0 - server_momentum if private else 1.0
    elif private and strategy in DP_SERVER_DEFAULTS:
        server.update(DP_SERVER_DEFAULTS[strategy])
    if server:
        out["strategy"] = server
    return out
