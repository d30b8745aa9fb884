"""Typed Serve application builders; the Serve config file names them as import paths."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from experiments.settings import get_settings
from serving.risk import RiskPredictor
from serving.vision import VisionClassifier

__all__ = ["RiskServingArgs", "VisionServingArgs", "actor_options", "build_risk_app", "build_vision_app", "gpus_available"]


class RiskServingArgs(BaseModel):
    """Arguments of the risk application (``args`` in the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(default="", description="MLflow URI; empty: BIOVERSE_TRACKING_URI or the embedded store")
    model_name: str = "cardiac-risk"
    alias: str = "production"
    poll_seconds: float = Field(default=5.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica where GPUs exist (fractions allowed)")
    num_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per replica")
    rollout_stats_url: str = Field(default="", description="the platform database the replicas count per-version rollout "
                                   "figures in; empty: BIOVERSE_ROLLOUT_STATS_URL where the application is built, "
                                   "else not counted")


class VisionServingArgs(BaseModel):
    """Arguments of the vision application (``args`` in the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(default="", description="MLflow URI; empty: BIOVERSE_TRACKING_URI or the embedded store")
    model_name: str = "chest-xray"
    alias: str = "production"
    poll_seconds: float = Field(default=5.0, gt=0)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="larger uploads get 413")
    max_batch_size: int = Field(default=32, ge=1, le=256,
                                description="most requests (each of one or many images) classified in one pass")
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, le=1,
                                        description="how long a batch waits for more requests once it has one")
    num_gpus: float = Field(default=0.25, ge=0, le=8,
                            description="GPUs per replica where the cluster has GPUs; fractions share one GPU between models")
    num_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per replica")


def gpus_available() -> float:
    """GPUs in the Ray cluster (0 without Ray started or without GPUs)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def actor_options(num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """A replica's resources: ``num_gpus`` only where the cluster has GPUs.

    Resources are set here, from the application's ``args``, and not under the Serve
    config's ``deployments[].ray_actor_options``: that key would replace these options
    whole, GPUs included.
    """
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus > 0 and gpus_available() > 0:
        options["num_gpus"] = num_gpus
    return {"ray_actor_options": options}


def build_risk_app(args: dict[str, Any]) -> Application:
    """The risk application: one autoscaled RiskPredictor deployment.

    Each model application is its own entry in the Serve config with its own route and
    ``num_gpus`` (see :func:`build_vision_app`).
    """
    parsed = RiskServingArgs(**args)
    uri = parsed.tracking_uri or get_settings().resolved_tracking_uri()
    options = actor_options(parsed.num_cpus, parsed.num_gpus)
    # read here, where `serve run` / `serve deploy` builds the application, and handed to every
    # replica: a worker node's environment need not carry it
    stats = parsed.rollout_stats_url or os.environ.get("BIOVERSE_ROLLOUT_STATS_URL", "")
    return RiskPredictor.options(**options).bind(uri, parsed.model_name, parsed.alias, parsed.poll_seconds, stats or None)


def build_vision_app(args: dict[str, Any]) -> Application:
    """The vision application: one autoscaled VisionClassifier deployment.

    ``num_gpus`` is requested only where the Ray cluster has GPUs (a fraction lets several
    models share one); elsewhere the replicas run on the CPU with the same config file.
    """
    parsed = VisionServingArgs(**args)
    uri = parsed.tracking_uri or get_settings().resolved_tracking_uri()
    options = actor_options(parsed.num_cpus, parsed.num_gpus)
    return VisionClassifier.options(**options).bind(uri, parsed.model_name, parsed.alias, parsed.poll_seconds,
                                                    parsed.max_image_bytes, parsed.max_batch_size,
                                                    parsed.batch_wait_timeout_s)
