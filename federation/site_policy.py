"""A hospital's site policy: what it lets a federated run do with its data, checked before any work."""

from __future__ import annotations

import functools
import math
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from experiments.spec import ExperimentSpec
from federation.errors import SiteConfigError, SitePolicyRefusal

__all__ = ["SitePolicy", "check_policy", "load_policy", "run_epsilon"]


class SitePolicy(BaseModel):
    """The ``[policy]`` table of a hospital's node config.

    Attributes:
        total_budget: Total epsilon this hospital allows on its data across all runs (its
            privacy ledger enforces it; a run that cannot fit in what is left is refused
            up front).
        max_epsilon_per_run: The largest epsilon one run may ask for (training target +
            statistics + model-selection releases).
        allowed_model_kinds: Model kinds (the spec's ``model.kind``) it trains; None: any.
        allowed_strategies: Aggregation strategies (``strategy.name``); None: any.
        min_cell: The smallest subgroup cell its validation counts may show: the run's
            ``validation.min_cell`` must be at least this.
        allow_images: Whether runs on images (``data.modality: images``) may use its data.
        require_dp: Whether every run must train with DP (``privacy.enabled``).
        require_secure_aggregation: Whether every run must aggregate with SecAgg+
            (``strategy.secure_aggregation``), so that no coordinator sees this hospital's update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_budget: float = Field(gt=0)
    max_epsilon_per_run: float = Field(default=5.0, gt=0)
    allowed_model_kinds: tuple[str, ...] | None = None
    allowed_strategies: tuple[str, ...] | None = None
    min_cell: int = Field(default=10, ge=1, le=1000)
    allow_images: bool = False
    require_dp: bool = True
    require_secure_aggregation: bool = False

    @field_validator("total_budget", "max_epsilon_per_run")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite epsilon")
        return value


def run_epsilon(spec: ExperimentSpec) -> float | None:
    """The epsilon a run asks of each hospital: its training target plus the statistics and
    model-selection releases (an upper bound on what its ledger is charged). None when it
    is not known before training (a fixed ``noise_multiplier``) or without DP."""
    privacy = spec.privacy
    if not privacy.enabled or privacy.target_epsilon is None:
        return None
    return privacy.target_epsilon + privacy.statistics_epsilon + privacy.selection_epsilon


def check_policy(policy: SitePolicy, spec: ExperimentSpec, hospital_id: str, spent_elsewhere: float | None = None) -> None:
    """Refuse a run the hospital's policy does not allow, before any work on its data.

    ``spent_elsewhere`` is the epsilon other runs have spent on this data (its ledger);
    given, a run that cannot fit in what is left of ``total_budget`` is refused.

    Raises:
        SitePolicyRefusal: naming the first rule the run breaks and what the run asked.
    """
    def refuse(what: str) -> SitePolicyRefusal:
        return SitePolicyRefusal(hospital_id, what)

    if policy.require_dp and not spec.privacy.enabled:
        raise refuse("runs without differential privacy (policy require_dp)")
    if policy.require_secure_aggregation and not spec.strategy.secure_aggregation:
        raise refuse("runs without secure aggregation (policy require_secure_aggregation)")
    if spec.modality.uses_images and not policy.allow_images:
        raise refuse("runs on images (policy allow_images = false)")
    if policy.allowed_model_kinds is not None and spec.model.kind not in policy.allowed_model_kinds:
        raise refuse(f"model kind {spec.model.kind!r} (policy allows {', '.join(policy.allowed_model_kinds) or 'none'})")
    if policy.allowed_strategies is not None and spec.strategy.name not in policy.allowed_strategies:
        raise refuse(f"strategy {spec.strategy.name!r} (policy allows {', '.join(policy.allowed_strategies) or 'none'})")
    if spec.validation.min_cell < policy.min_cell:
        raise refuse(f"validation cells of {spec.validation.min_cell} patients (policy min_cell {policy.min_cell})")
    epsilon = run_epsilon(spec)
    if spec.privacy.enabled and epsilon is None:
        raise refuse("a run whose epsilon is unknown before training (the spec fixes privacy.noise_multiplier; "
                     "give privacy.target_epsilon)")
    if epsilon is not None and epsilon > policy.max_epsilon_per_run + 1e-9:
        raise refuse(f"epsilon {epsilon:g} for one run (policy max_epsilon_per_run {policy.max_epsilon_per_run:g})")
    if epsilon is not None and spent_elsewhere is not None and spent_elsewhere + epsilon > policy.total_budget + 1e-9:
        raise refuse(f"epsilon {epsilon:g}: only {max(policy.total_budget - spent_elsewhere, 0.0):.3f} "
                     f"of its total budget {policy.total_budget:g} is left")


def load_policy(path: Path) -> SitePolicy:
    """The ``[policy]`` table of a node config file (re-read when the file changes).

    Raises:
        SiteConfigError: the file is unreadable or its policy invalid.
    """
    try:
        stat = path.stat()
    except OSError as err:
        raise SiteConfigError(f"site policy {path} is unreadable: {err.strerror or err}") from err
    return _load(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: Path, _mtime: int, _size: int) -> SitePolicy:
    try:
        table = tomllib.loads(path.read_text()).get("policy")
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SiteConfigError(f"site policy {path} is unreadable: {err}") from err
    if not isinstance(table, dict):
        raise SiteConfigError(f"{path} has no [policy] table")
    try:
        return SitePolicy.model_validate(table)
    except ValidationError as err:
        first = err.errors()[0]
        raise SiteConfigError(f"{path}: policy.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from err
