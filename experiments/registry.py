"""The clinical review workflow of registered model versions: decisions, promotion and rollback (docs/review.md)."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from experiments.errors import (
    LauncherUnknown,
    NotApproved,
    NothingToRollBack,
    NotPending,
    RationaleRequired,
    RationaleTooLong,
    ReceiptInvalid,
    ReportMissing,
    ReportNotRead,
    ReportStale,
    ReviewError,
    SelfApproval,
    TrackingError,
    WrongScope,
)
from experiments.gate import (
    APPROVAL_TAG,
    TENANT_TAG,
    Identity,
    approval_problem,
    artifact_digest,
    download_version,
    parse_identity,
    read_receipt,
    sign_approval,
)
from experiments.registry_reader import APPROVED, PENDING, PRODUCTION_ALIAS, REJECTED, REPORT_PATH, RegistryReader
from experiments.review_records import Decision

__all__ = ["HISTORY_TAG", "MAX_RATIONALE", "MIN_RATIONALE", "ModelRegistry"]

HISTORY_TAG = "production.history"
MIN_RATIONALE = 20
#: MLflow 3.17 stores version tags as TEXT (100,000 characters checked by the client), but older
#: stores and servers cap tag values at 5,000; a rationale longer than that is refused, not cut.
MAX_RATIONALE = 5000
_MAX_HISTORY = 5000  # registered-model tag values are VARCHAR(5000)


def _now() -> str:
    """UTC, ISO 8601 with ``Z``: the spelling of every timestamp the platform API answers."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ModelRegistry(RegistryReader):
    """Review, promotion and rollback of registered versions in one MLflow registry
    (reading them: :class:`experiments.registry_reader.RegistryReader`).

    Args:
        tracking_uri: MLflow tracking (and registry) URI, e.g. ``sqlite:///mlflow.db``.
    """

    # ------------------------------------------------------------------ review

    def approve(self, name: str, version: str, *, validator: Identity, rationale: str, receipt: str) -> Decision:
        """Approve a pending version: ``receipt`` proves the validator fetched its current report."""
        return self._decide(APPROVED, name, version, validator=validator, rationale=rationale, receipt=receipt)

    def reject(self, name: str, version: str, *, validator: Identity, rationale: str,
               receipt: str | None = None) -> Decision:
        """Reject a pending version (no report needed; a given receipt must match the stored report)."""
        return self._decide(REJECTED, name, version, validator=validator, rationale=rationale, receipt=receipt)

    def _check_independent(self, mv: ModelVersion, validator: Identity) -> None:
        """Refuse a decider who launched the version, or whose scope does not cover the model."""
        where = f"{mv.name} version {mv.version}"
        if validator.kind != "key" or not validator.key_id:
            raise ReviewError("decisions are made with an API key (BIOVERSE_API_KEY or --api-key)")
        if not " ".join(validator.person.split()):
            raise ReviewError(f"key {validator.key_id} names no person; decisions need a key created with --name")
        launcher = parse_identity(dict(mv.tags).get("launched_by"))
        if launcher is None:
            raise LauncherUnknown(f"{where} does not record who launched it (no launched_by tag): "
                                  "cannot check the validator is independent")
        if launcher.kind != "key":
            raise LauncherUnknown(f"{where} was launched by {launcher.display}, which cannot be compared with an "
                                  "API key: relaunch it with the launcher's API key (BIOVERSE_API_KEY)")
        if not " ".join(launcher.person.split()):
            raise LauncherUnknown(f"{where} was launched with key {launcher.key_id}, which names no person: "
                                  "the validator cannot be compared by person")
        if launcher.same_person(validator):
            raise SelfApproval(f"{validator.person} launched the experiment behind {where} "
                               f"(as {launcher.display}); an independent clinical validator must review it")
        model_tenant = (self._model_tags(mv.name).get(TENANT_TAG) or "").strip() or None
        if validator.tenant_id is not None and validator.tenant_id != model_tenant:
            whose = "platform-wide" if model_tenant is None else f"tenant {model_tenant}'s"
            raise WrongScope(f"{mv.name} is {whose} model; a validator key of tenant {validator.tenant_id} "
                             "cannot decide on it (platform-wide models need a validator key without a tenant)")

    def _decide(self, status: str, name: str, version: str, *, validator: Identity, rationale: str,
                receipt: str | None) -> Decision:
        mv = self._version(name, version)
        tags = dict(mv.tags)
        current = tags.get("review_status", PENDING)
        if current != PENDING:
            raise NotPending(f"{name} version {version} is already {current}")
        text = (rationale or "").strip()
        if len(text) < MIN_RATIONALE:
            raise RationaleRequired(f"a rationale of at least {MIN_RATIONALE} characters is required "
                                    f"(got {len(text)})")
        if len(text) > MAX_RATIONALE:
            raise RationaleTooLong(f"the rationale is {len(text)} characters; at most {MAX_RATIONALE} are stored")
        self._check_independent(mv, validator)
        action = "approve" if status == APPROVED else "reject"
        seen: str | None = None
        if status == APPROVED or (receipt or "").strip():
            try:
                seen = read_receipt(receipt, validator.key_id, name, str(version))
            except ReceiptInvalid as err:
                raise ReportNotRead(str(err)) from None
            self._check_report(mv, seen, required=status == APPROVED)
        approval = self._sign(mv, seen or "", validator.scope) if status == APPROVED else None
        token = uuid.uuid4().hex
        at = _now()
        self._tag(name, version, "review.claim", token)
        self._check_still_ours(name, version, token)
        for key, value in (("review.decided_by", validator.display), ("review.decided_by_key", validator.key_id),
                           ("review.decided_at", at), ("review.rationale", text), ("review.report_sha256", seen or "none")):
            self._tag(name, version, key, value)
        self._check_still_ours(name, version, token)
        if approval is not None:
            self._tag(name, version, APPROVAL_TAG, approval)
        self._tag(name, version, "review_status", status)  # last: until here the version stays pending
        return Decision(action=action, name=name, version=str(version), actor=validator.display, at=at, rationale=text,
                        report_sha256=seen, outcome=status)

    def _sign(self, mv: ModelVersion, report_sha256: str, scope: str) -> str:
        """The gate's approval over the model files as every loader downloads them."""
        with tempfile.TemporaryDirectory(prefix="bioverse-approve-") as tmp:
            try:
                digest = artifact_digest(download_version(self.tracking_uri, mv.name, str(mv.version), Path(tmp)))
            except (MlflowException, OSError) as err:
                raise TrackingError(f"MLflow download of {mv.name} version {mv.version} failed: {err}") from err
        return sign_approval(mv.name, str(mv.version), source=str(mv.source), digest=digest,
                             report_sha256=report_sha256, scope=scope)

    def _check_report(self, mv: ModelVersion, seen: str | None, *, required: bool) -> str | None:
        """The stored report's hash, after checking it against the version's tag and ``seen``."""
        where = f"{mv.name} version {mv.version}"
        tags = dict(mv.tags)
        data = self._report_bytes(mv)
        if data is None or tags.get("validation.status") != "complete":
            if not required:
                raise ReportStale(f"{where} has no validation report to match the sha256 you gave")
            status = tags.get("validation.status", "not recorded")
            raise ReportMissing(f"{where} has no validation report (validation.status {status}"
                                f"{'' if data is not None else ', no ' + REPORT_PATH}); it cannot be approved")
        actual = hashlib.sha256(data).hexdigest()
        registered = tags.get("validation.report_sha256", "").strip().lower()
        if not registered:
            raise ReportMissing(f"{where} records no validation.report_sha256; the report cannot be verified")
        if actual != registered:
            raise ReportStale(f"{where}: {REPORT_PATH} (sha256 {actual[:12]}) changed since registration "
                              f"(registered {registered[:12]})")
        if seen is not None and seen != actual:
            raise ReportStale(f"{where}: the report you read (sha256 {seen[:12]}) is not the current one "
                              f"({actual[:12]}); read the current report and decide again")
        return actual

    def _check_still_ours(self, name: str, version: str, token: str) -> None:
        tags = dict(self._version(name, version).tags)
        status = tags.get("review_status", PENDING)
        if status != PENDING:
            raise NotPending(f"{name} version {version} is already {status}")
        if tags.get("review.claim") != token:
            raise NotPending(f"{name} version {version} is being decided by someone else right now")

    # ------------------------------------------------------------------ aliases

    def promote(self, name: str, version: str, *, actor: str) -> Decision:
        """Give an approved version the ``production`` alias (serving follows it)."""
        mv = self._version(name, version)
        tags = dict(mv.tags)
        status = tags.get("review_status", PENDING)
        if status != APPROVED:
            raise NotApproved(f"{name} version {version} is {status}; only an approved version can be promoted")
        if (problem := approval_problem(tags, name, str(version), source=str(mv.source), scope=None)) is not None:
            raise NotApproved(f"{problem}; it cannot be promoted")
        approved_hash = tags.get("review.report_sha256", "")
        self._check_report(mv, approved_hash or None, required=True)
        previous = self._aliases(name).get(PRODUCTION_ALIAS)
        at = _now()
        if previous == str(version):
            return Decision("promote", name, str(version), actor, at, None, approved_hash or None, "unchanged", previous)
        history = self._history(name, previous)
        self._call("set alias", self.client.set_registered_model_alias, name, PRODUCTION_ALIAS, str(version))
        self._set_history(name, [*history, str(version)])
        return Decision("promote", name, str(version), actor, at, None, approved_hash or None, "promoted", previous)

    def rollback(self, name: str, *, actor: str, to_version: str | None = None) -> Decision:
        """Move ``production`` back to the previous approved version of its history (skipping
        versions no longer approved), or to ``to_version`` (which must be approved)."""
        current = self._aliases(name).get(PRODUCTION_ALIAS)
        history = self._history(name, current)
        if to_version is not None:
            target = str(to_version)
            mv = self._version(name, target)
            status = dict(mv.tags).get("review_status", PENDING)
            if status != APPROVED:
                raise NotApproved(f"{name} version {target} is {status}; production can only move to an approved version")
            if (problem := approval_problem(dict(mv.tags), name, target, source=str(mv.source), scope=None)) is not None:
                raise NotApproved(f"{problem}; production cannot move to it")
            if target == current:
                raise NothingToRollBack(f"{name} version {target} is already in production")
            new_history = history[: len(history) - history[::-1].index(target)] if target in history else [*history, target]
        else:
            if current is None:
                raise NothingToRollBack(f"{name} has no production version to roll back from")
            earlier = list(history)
            while earlier and earlier[-1] == current:
                earlier.pop()
            target = ""
            while earlier:
                candidate = earlier[-1]
                if candidate != current and self._status(name, candidate) == APPROVED:
                    target = candidate
                    break
                earlier.pop()
            if not target:
                raise NothingToRollBack(f"{name} has no earlier approved version to roll back to "
                                        f"(production is version {current})")
            new_history = earlier
        self._call("set alias", self.client.set_registered_model_alias, name, PRODUCTION_ALIAS, target)
        self._set_history(name, new_history)
        return Decision("rollback", name, target, actor, _now(), None, None, "rolled back", current)

    def _status(self, name: str, version: str) -> str | None:
        """The review status, ``approved`` only with a valid approval signature."""
        try:
            mv = self.client.get_model_version(name, version)
        except MlflowException:
            return None  # a deleted version cannot be rolled back to
        tags = dict(mv.tags)
        if approval_problem(tags, name, str(version), source=str(mv.source), scope=None) is not None:
            return tags.get("review_status", PENDING) if tags.get("review_status") != APPROVED else "unsigned"
        return APPROVED

    def _history(self, name: str, current: str | None) -> list[str]:
        """``production.history``; a production alias set outside this workflow starts it."""
        model = self._call("get registered model", self.client.get_registered_model, name)
        history = [v for v in (model.tags or {}).get(HISTORY_TAG, "").split(",") if v]
        if current is not None and (not history or history[-1] != current):
            history.append(current)
        return history

    def _set_history(self, name: str, history: list[str]) -> None:
        value = ",".join(history)
        while len(value) > _MAX_HISTORY:  # forget the oldest entries
            value = value.split(",", 1)[1]
        self._call("tag registered model", self.client.set_registered_model_tag, name, HISTORY_TAG, value)
