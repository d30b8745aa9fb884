"""The model registry review workflow over HTTP: versions, their validation reports, and
the decisions (approve, reject, promote, rollback), each one audited.

Reading is open to data scientists, clinical validators and admins; deciding and
promoting to clinical validators; rollback to admins. The gate itself (self-approval,
missing or stale reports, unapproved promotion) lives in :mod:`experiments.registry`, the
same code the CLI uses. The caller's key (its id and person name) is the decider.

The version JSON does not carry the report's hash: the report routes answer with a read
receipt (header ``X-Report-Receipt``) bound to the caller, the version and the report's
sha256, and approval takes that receipt, so a validator proves they fetched the report.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from experiments.registry import Decision, ModelRegistry, VersionInfo, audit_action
from platform_api.audit import audited
from platform_api.auth import Principal
from platform_api.deps import SessionDep, require_roles
from platform_api.errors import NotFound
from platform_api.settings import get_settings

__all__ = ["RECEIPT_HEADER", "router"]

RECEIPT_HEADER = "X-Report-Receipt"

router = APIRouter(prefix="/v1/registry/models/{name}", tags=["registry"])

Reader = Annotated[Principal, Depends(require_roles("data_scientist", "clinical_validator", "admin", tenant=False))]
Validator = Annotated[Principal, Depends(require_roles("clinical_validator", tenant=False))]
Admin = Annotated[Principal, Depends(require_roles("admin", tenant=False))]
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


@functools.cache
def _registry(uri: str) -> ModelRegistry:
    return ModelRegistry(uri)


def registry() -> ModelRegistry:
    """The registry the API reviews (the tracking URI the API scores from)."""
    return _registry(get_settings().resolved_tracking_uri())


def _public(info: VersionInfo) -> VersionPublic:
    return VersionPublic.model_validate({**info.__dict__, "aliases": list(info.aliases)})


@router.get("/versions", response_model=list[VersionPublic])
async def list_versions(name: ModelName, caller: Reader) -> list[VersionPublic]:
    """Every version of the model, newest first, with review status, validation summary and aliases."""
    versions = await run_in_threadpool(registry().versions, name)
    if not versions:
        raise NotFound(f"no registered model {name}")
    return [_public(v) for v in versions]


@router.get("/versions/{version}", response_model=VersionPublic)
async def show_version(name: ModelName, version: VersionId, caller: Reader) -> VersionPublic:
    """One version."""
    return _public(await run_in_threadpool(registry().show, name, version))


#: The read receipt a report fetch answers with (approval takes it as ``report_receipt``).
_WITH_RECEIPT: dict[int | str, dict[str, Any]] = {200: {"headers": {RECEIPT_HEADER: {
    "description": "Your read receipt of this report (valid 4 h, bound to your key and this version): "
                   "send it as report_receipt to approve", "schema": {"type": "string"}}}}}


@router.get("/versions/{version}/report", response_model=dict[str, Any], responses=_WITH_RECEIPT)
async def version_report(name: ModelName, version: VersionId, caller: Reader, response: Response) -> dict[str, Any]:
    """The version's validation report (report.json: metrics overall and by subgroup), with
    the caller's read receipt in the ``X-Report-Receipt`` header (approval needs it)."""
    read = await run_in_threadpool(registry().read_report, name, version, caller.identity)
    if read is None:
        raise NotFound(f"{name} version {version} has no validation report")
    response.headers[RECEIPT_HEADER] = read[1]
    return read[0]


@router.get("/versions/{version}/report.html", response_class=HTMLResponse, responses=_WITH_RECEIPT)
async def version_report_html(name: ModelName, version: VersionId, caller: Reader) -> HTMLResponse:
    """The version's validation report as the rendered page (plots embedded), with the
    caller's read receipt of the report it renders (``X-Report-Receipt``)."""
    reg = registry()
    html = await run_in_threadpool(reg.report_html, name, version)
    receipt = await run_in_threadpool(reg.receipt, name, version, caller.identity) if html is not None else None
    if html is None or receipt is None:
        raise NotFound(f"{name} version {version} has no validation report")
    return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
                                       RECEIPT_HEADER: receipt, "Cache-Control": "no-store"})


def _decide(session: Any, caller: Principal, action: str, target: tuple[str, str], fn: Any, **kwargs: Any) -> Decision:
    """Run one decision and audit it (refusals too, with the error as outcome)."""
    with audited(session, caller, audit_action(action, *target)):
        decision: Decision = fn(**kwargs)
    return decision


#: The gate's refusals (decided already, no or stale report or receipt, not approved, nothing to roll back).
_REFUSED: dict[int | str, dict[str, Any]] = {409: {"description": "The registry's gate refuses this decision"}}


@router.post("/versions/{version}/approve", response_model=Decision, responses=_REFUSED)
def approve(name: ModelName, version: VersionId, body: ReviewCreate, session: SessionDep, caller: Validator) -> Decision:
    """Approve a pending version: refused for its launcher (same key or person), outside the
    key's scope (a tenant's validator and a platform-wide model), without a read receipt of
    the current report, or if the report changed since the validator read it."""
    return _decide(session, caller, "approve", (name, version), registry().approve, name=name, version=version,
                   validator=caller.identity, rationale=body.rationale, receipt=body.report_receipt)


@router.post("/versions/{version}/reject", response_model=Decision, responses=_REFUSED)
def reject(name: ModelName, version: VersionId, body: RejectCreate, session: SessionDep, caller: Validator) -> Decision:
    """Reject a pending version, with the rationale."""
    return _decide(session, caller, "reject", (name, version), registry().reject, name=name, version=version,
                   validator=caller.identity, rationale=body.rationale, receipt=body.report_receipt)


@router.post("/versions/{version}/promote", response_model=Decision, responses=_REFUSED)
def promote(name: ModelName, version: VersionId, session: SessionDep, caller: Validator) -> Decision:
    """Give an approved version the ``production`` alias (serving and the API follow it)."""
    return _decide(session, caller, "promote", (name, version), registry().promote, name=name, version=version,
                   actor=caller.identity.display)


@router.post("/rollback", response_model=Decision, responses=_REFUSED)
def rollback(name: ModelName, body: RollbackCreate, session: SessionDep, caller: Admin) -> Decision:
    """Move ``production`` back to the previous approved version (or ``to_version``)."""
    return _decide(session, caller, "rollback", (name, body.to_version or "previous"), registry().rollback, name=name,
                   actor=caller.identity.display, to_version=body.to_version)

