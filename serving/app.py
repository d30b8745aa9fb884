"""Typed Serve application builders; the Serve config file names them as import paths."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from experiments.settings import get_settings
from serving.risk import RiskPredictor

__all__ = ["RiskServingArgs", "build_risk_app", "gpus_available"]


class RiskServingArgs(BaseModel):
    """Arguments of the risk application (``args`` in the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(default="", description="MLflow URI; empty: BIOVERSE_TRACKING_URI or the embedded store")
    model_name: str = "cardiac-risk"
    alias: str = "production"
    poll_seconds: float = Field(default=5.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica where GPUs exist (fractions allowed)")


def gpus_available() -> float:
    """GPUs in the Ray cluster (0 without Ray started or without GPUs)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def build_risk_app(args: dict[str, Any]) -> Application:
    """The risk application: one autoscaled RiskPredictor deployment.

    More model applications (vision next) are built the same way, each its own entry in
    the Serve config with its own route and ``num_gpus``.
    """
    parsed = RiskServingArgs(**args)
    uri = parsed.tracking_uri or get_settings().resolved_tracking_uri()
    options: dict[str, Any] = {}
    if parsed.num_gpus > 0 and gpus_available() > 0:
        options["ray_actor_options"] = {"num_gpus": parsed.num_gpus}
    return RiskPredictor.options(**options).bind(uri, parsed.model_name, parsed.alias, parsed.poll_seconds)
