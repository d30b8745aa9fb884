"""The model registry review workflow over HTTP: versions, their reports (with read receipts) and the audited decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from experiments.review_records import Decision, VersionInfo
from platform_api.auth import Principal
from platform_api.deps import RegistryDep, ReviewsDep, SessionDep, require_roles
from platform_api.errors import NotFound

__all__ = ["RECEIPT_HEADER", "router"]

RECEIPT_HEADER = "X-Report-Receipt"

router = APIRouter(prefix="/v1/registry/models/{name}", tags=["registry"])

Reader = Annotated[Principal, Depends(require_roles("data_scientist", "clinical_validator", "admin"))]
Validator = Annotated[Principal, Depends(require_roles("clinical_validator"))]
Admin = Annotated[Principal, Depends(require_roles("admin"))]
ModelName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VersionId = Annotated[str, Path(min_length=1, max_length=10, pattern=r"^[0-9]+$")]


class VersionPublic(BaseModel):
    """A registered version as reviewers see it."""

    model_config = ConfigDict(from_attributes=True)
    name: str
    version: str
    created: datetime
    review_status: str
    validation_status: str
    auroc: float | None
    calibration_slope: float | None
    epsilon: float | None
    aliases: list[str]
    launched_by: str | None
    run_id: str | None
    experiment: str | None
    decided_by: str | None
    decided_at: str | None
    rationale: str | None
    quality_warning: str | None = Field(description="Set at registration when the model does no better than trivial")
    gate_warning: str | None = Field(description="'production alias without approval' when the alias was moved by hand")


_RECEIPT = Field(min_length=1, max_length=300, pattern=r"^[0-9a-f]{64}\.[0-9]{1,12}\.[0-9a-f]{64}$",
                 description=f"The {RECEIPT_HEADER} header of your GET of the version's report")


class ReviewCreate(BaseModel):
    """A validator's decision: the rationale, and the receipt of the report they fetched."""

    model_config = ConfigDict(extra="forbid")
    rationale: str = Field(min_length=1, max_length=5000)
    report_receipt: str = _RECEIPT


class RejectCreate(BaseModel):
    """A rejection: the rationale (and the report's receipt if they read one)."""

    model_config = ConfigDict(extra="forbid")
    rationale: str = Field(min_length=1, max_length=5000)
    report_receipt: str | None = Field(default=None, min_length=1, max_length=300,
                                       pattern=r"^[0-9a-f]{64}\.[0-9]{1,12}\.[0-9a-f]{64}$")


class RollbackCreate(BaseModel):
    """Where production goes back to (default: the previous approved production version)."""

    model_config = ConfigDict(extra="forbid")
    to_version: str | None = Field(default=None, pattern=r"^[0-9]+$", max_length=10)


def _public(info: VersionInfo) -> VersionPublic:
    return VersionPublic.model_validate({**info.__dict__, "aliases": list(info.aliases)})


@router.get("/versions", response_model=list[VersionPublic])
async def list_versions(name: ModelName, caller: Reader, registry: RegistryDep) -> list[VersionPublic]:
    """Every version of the model, newest first, with review status, validation summary and aliases."""
    versions = await run_in_threadpool(registry.versions, name)
    if not versions:
        raise NotFound(f"no registered model {name}")
    return [_public(v) for v in versions]


@router.get("/versions/{version}", response_model=VersionPublic)
async def show_version(name: ModelName, version: VersionId, caller: Reader, registry: RegistryDep) -> VersionPublic:
    """One version."""
    return _public(await run_in_threadpool(registry.show, name, version))


#: The read receipt a report fetch answers with (approval takes it as ``report_receipt``).
_WITH_RECEIPT: dict[int | str, dict[str, Any]] = {200: {"headers": {RECEIPT_HEADER: {
    "description": "Your read receipt of this report (valid 4 h, bound to your key and this version): "
                   "send it as report_receipt to approve", "schema": {"type": "string"}}}}}


@router.get("/versions/{version}/report", response_model=dict[str, Any], responses=_WITH_RECEIPT)
async def version_report(name: ModelName, version: VersionId, caller: Reader, registry: RegistryDep,
                         response: Response) -> dict[str, Any]:
    """The version's validation report (report.json: metrics overall and by subgroup), with
    the caller's read receipt in the ``X-Report-Receipt`` header (approval needs it)."""
    read = await run_in_threadpool(registry.read_report, name, version, caller.identity)
    if read is None:
        raise NotFound(f"{name} version {version} has no validation report")
    response.headers[RECEIPT_HEADER] = read[1]
    return read[0]


@router.get("/versions/{version}/report.html", response_class=HTMLResponse, responses=_WITH_RECEIPT)
async def version_report_html(name: ModelName, version: VersionId, caller: Reader, registry: RegistryDep) -> HTMLResponse:
    """The version's validation report as the rendered page (plots embedded), with the
    caller's read receipt of the report it renders (``X-Report-Receipt``)."""
    html = await run_in_threadpool(registry.report_html, name, version)
    receipt = await run_in_threadpool(registry.receipt, name, version, caller.identity) if html is not None else None
    if html is None or receipt is None:
        raise NotFound(f"{name} version {version} has no validation report")
    return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
                                       RECEIPT_HEADER: receipt, "Cache-Control": "no-store"})


#: The gate's refusals (decided already, no or stale report or receipt, not approved, nothing to roll back).
_REFUSED: dict[int | str, dict[str, Any]] = {409: {"description": "The registry's gate refuses this decision"}}


@router.post("/versions/{version}/approve", response_model=Decision, responses=_REFUSED)
def approve(name: ModelName, version: VersionId, body: ReviewCreate, session: SessionDep, caller: Validator,
            reviews: ReviewsDep) -> Decision:
    """Approve a pending version: refused for its launcher (same key or person), outside the
    key's scope (a tenant's validator and a platform-wide model), without a read receipt of
    the current report, or if the report changed since the validator read it."""
    return reviews.approve(session, caller, name, version, rationale=body.rationale, receipt=body.report_receipt)


@router.post("/versions/{version}/reject", response_model=Decision, responses=_REFUSED)
def reject(name: ModelName, version: VersionId, body: RejectCreate, session: SessionDep, caller: Validator,
           reviews: ReviewsDep) -> Decision:
    """Reject a pending version, with the rationale."""
    return reviews.reject(session, caller, name, version, rationale=body.rationale, receipt=body.report_receipt)


@router.post("/versions/{version}/promote", response_model=Decision, responses=_REFUSED)
def promote(name: ModelName, version: VersionId, session: SessionDep, caller: Validator, reviews: ReviewsDep) -> Decision:
    """Give an approved version the ``production`` alias (serving and the API follow it)."""
    return reviews.promote(session, caller, name, version)


@router.post("/rollback", response_model=Decision, responses=_REFUSED)
def rollback(name: ModelName, body: RollbackCreate, session: SessionDep, caller: Admin, reviews: ReviewsDep) -> Decision:
    """Move ``production`` back to the previous approved version (or ``to_version``)."""
    return reviews.rollback(session, caller, name, body.to_version)
