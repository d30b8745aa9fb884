"""Live drift of a registered version over HTTP: the numbers /metrics exports and the review page shows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from platform_api.deps import RegistryDep
from platform_api.monitoring import WindowSpec, get_monitor
from platform_api.routes.registry import ModelName, Reader, VersionId
from platform_api.settings import get_settings

__all__ = ["router"]

router = APIRouter(prefix="/v1/registry/models/{name}", tags=["registry"])

WindowSize = Annotated[int | None, Query(ge=1, le=100_000, description="The last this many predictions (default: monitor_window)")]
WindowMinutes = Annotated[float | None, Query(ge=0, le=525_600, description="Only those of the last this many minutes (0: no bound)")]


@router.get("/versions/{version}/monitoring", response_model=dict[str, Any])
async def version_monitoring(name: ModelName, version: VersionId, caller: Reader, registry: RegistryDep,
                             window: WindowSize = None, minutes: WindowMinutes = None) -> dict[str, Any]:
    """Drift of the version's served predictions against its validation reference: PSI per input
    feature and for the prediction score, binned KS for numeric features, the window and the alert
    (docs/monitoring.md). ``status`` says when there are too few predictions or no feature reference.
    A key of one tenant gets the drift of that tenant's predictions only."""
    await run_in_threadpool(registry.show, name, version)  # 404 for a version the registry does not have
    settings = get_settings()
    spec = WindowSpec.from_settings(settings, size=window, minutes=minutes)
    # a tenant's key (data scientists have one) sees its own tenant's predictions, never others' counts
    return await run_in_threadpool(get_monitor(settings).version_drift, name, version, spec, caller.tenant_id)
