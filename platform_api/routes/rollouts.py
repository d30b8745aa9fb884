"""Staged rollouts over HTTP: start, status, pause, resume, abort and the controller's step, each audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from experiments.rollout_rules import RolloutConfig
from platform_api.auth import Principal
from platform_api.deps import SessionDep, require_roles
from platform_api.rollouts import RolloutService, rollouts_at
from platform_api.settings import get_settings

__all__ = ["router"]

router = APIRouter(prefix="/v1/registry/models/{name}/rollout", tags=["registry"])

Reader = Annotated[Principal, Depends(require_roles("data_scientist", "clinical_validator", "admin"))]
Validator = Annotated[Principal, Depends(require_roles("clinical_validator"))]
Decider = Annotated[Principal, Depends(require_roles("clinical_validator", "admin"))]
ModelName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


async def get_rollouts() -> RolloutService:
    """The rollout service on the API's registry and platform database."""
    settings = get_settings()
    return rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())


RolloutsDep = Annotated[RolloutService, Depends(get_rollouts)]


class RolloutCreate(BaseModel):
    """Which approved version to roll out, and the rollout's settings (defaults where left out)."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=10, pattern=r"^[0-9]+$")
    config: RolloutConfig = Field(default_factory=RolloutConfig)


#: The registry refuses (not approved, another rollout active, no active rollout...).
_REFUSED: dict[int | str, dict[str, Any]] = {409: {"description": "The registry's gate or the rollout's state refuses this"}}


@router.post("", status_code=201, responses=_REFUSED)
def start(name: ModelName, body: RolloutCreate, session: SessionDep, caller: Validator,
          rollouts: RolloutsDep) -> dict[str, Any]:
    """Start a staged rollout of an approved version (a validator's decision, audited)."""
    state = rollouts.start(session, caller, name, body.version, body.config)
    return rollouts.status(state.model).as_dict()


@router.get("", responses={409: {"description": "The model was never rolled out"}})
async def status(name: ModelName, caller: Reader, rollouts: RolloutsDep) -> dict[str, Any]:
    """The latest rollout: state, step, share, both versions' live statistics and the rules' verdict."""
    return (await run_in_threadpool(rollouts.status, name)).as_dict()


@router.post("/pause", responses=_REFUSED)
def pause(name: ModelName, session: SessionDep, caller: Decider, rollouts: RolloutsDep) -> dict[str, Any]:
    """Hold the rollout at its step (traffic stays split)."""
    rollouts.pause(session, caller, name)
    return rollouts.status(name).as_dict()


@router.post("/resume", responses=_REFUSED)
def resume(name: ModelName, session: SessionDep, caller: Decider, rollouts: RolloutsDep) -> dict[str, Any]:
    """Let a paused rollout's step be judged again."""
    rollouts.resume(session, caller, name)
    return rollouts.status(name).as_dict()


@router.post("/abort", responses=_REFUSED)
def abort(name: ModelName, session: SessionDep, caller: Decider, rollouts: RolloutsDep) -> dict[str, Any]:
    """End the rollout: production takes all traffic again."""
    rollouts.abort(session, caller, name)
    return rollouts.status(name).as_dict()


@router.post("/step", responses=_REFUSED)
def step(name: ModelName, session: SessionDep, caller: Decider, rollouts: RolloutsDep) -> dict[str, Any]:
    """Run the controller's step now (what ``bioverse rollout watch`` does every few seconds)."""
    return rollouts.step(session, name).as_dict()
