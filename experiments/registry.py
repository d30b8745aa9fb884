"""The clinical review workflow of registered model versions (MLflow registry).

Every version is registered ``review_status=pending`` (and becomes the ``candidate``). A clinical
validator then approves or rejects it with a written rationale; only an approved version may take
the ``production`` alias, which serving follows; :meth:`ModelRegistry.rollback` moves
``production`` back to an earlier approved version.

State lives in the registry itself, so the MLflow UI shows it next to the version:

* version tags ``review.decided_by``, ``review.decided_at`` (UTC, ISO 8601), ``review.rationale``,
  ``review.report_sha256`` (the report the validator saw), written first, and ``review_status``
  (``approved`` | ``rejected``), written LAST: a decision that fails midway leaves the version
  pending, and ``review.*`` tags only mean something once ``review_status`` is not pending;
* the registered-model tag ``production.history``: the versions that held ``production``, oldest
  first, as a stack (promote pushes, rollback pops back to its target), so rollback knows the
  order. The audit log, not this tag, is the full trail.

Rules (each refusal is a :class:`ReviewError` with a one-line message):

* a decision needs a pending version and a rationale of at least :data:`MIN_RATIONALE` characters
  (at most :data:`MAX_RATIONALE`);
* every decision is made by an authenticated principal (:class:`experiments.gate.Identity`, an
  API key with its person's name), and that principal must not be the one who launched the
  experiment (tag ``launched_by``, the same kind of identity): same key or same person name is
  refused. This holds for rejections too: a decision is a record of *independent* review. A
  version whose launcher is unknown or only an OS login cannot be decided (fail closed);
* a platform-wide model (no registered-model tag ``bioverse.tenant``) is decided only by
  validators whose key belongs to no tenant; a tenant's model by that tenant's validators or
  platform validators (:class:`WrongScope` otherwise);
* approval needs the validation report (``validation.status=complete`` and
  ``validation/report.json`` in the version's run), whose bytes must hash to the version's
  ``validation.report_sha256`` tag (unchanged since registration) and to the hash in the
  validator's read receipt (:func:`experiments.gate.read_receipt`), which only fetching the
  report yields; a rejection needs no report, but a receipt given with it is checked the same way;
* an approval is signed (tag ``review.approval``, :func:`experiments.gate.sign_approval`) over
  the model files' digest; loaders serve ``production`` only with a valid signature;
* only an approved, validly signed version is promoted, and only while its report still hashes
  to the approved one.

Concurrency: MLflow has no compare-and-set on tags. Two validators deciding at once are
separated on a best-effort basis: each writes a ``review.claim`` token, and right before the
final ``review_status`` write re-reads the version; the one that finds the status decided or the
claim taken by someone else gets :class:`NotPending`. A small window remains between that re-read
and the final write. Serialise decisions in one process (the API) where that matters.

Decisions are returned as :class:`Decision` records for the caller (the platform API, the CLI) to
write to its audit log; :func:`audit_action` names them there.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

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
    VersionNotFound,
    WrongScope,
)
from experiments.gate import (
    APPROVAL_TAG,
    TENANT_TAG,
    Identity,
    approval_problem,
    artifact_digest,
    download_version,
    issue_receipt,
    parse_identity,
    read_receipt,
    sign_approval,
)
from experiments.names import VALIDATION_DIR
from experiments.review_records import Decision, VersionInfo, audit_action

__all__ = [
    "HISTORY_TAG",
    "HTML_PATH",
    "MAX_RATIONALE",
    "MIN_RATIONALE",
    "PRODUCTION_ALIAS",
    "QUALITY_TAG",
    "UNAPPROVED_PRODUCTION",
    "REPORT_PATH",
    "Decision",
    "ModelRegistry",
    "VersionInfo",
    "audit_action",
]

PRODUCTION_ALIAS = "production"
HISTORY_TAG = "production.history"
REPORT_PATH = f"{VALIDATION_DIR}/report.json"
HTML_PATH = f"{VALIDATION_DIR}/report.html"
MIN_RATIONALE = 20
#: MLflow 3.17 stores version tags as TEXT (100,000 characters checked by the client), but older
#: stores and servers cap tag values at 5,000; a rationale longer than that is refused, not cut.
MAX_RATIONALE = 5000
_MAX_HISTORY = 5000  # registered-model tag values are VARCHAR(5000)
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
QUALITY_TAG = "validation.quality_warning"
UNAPPROVED_PRODUCTION = "production alias without approval"


def _now() -> str:
    """UTC, ISO 8601 with ``Z``: the spelling of every timestamp the platform API answers."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace("'", "\\'")


T = TypeVar("T")


class ModelRegistry:
    """Review, promotion and rollback of registered versions in one MLflow registry.

    Args:
        tracking_uri: MLflow tracking (and registry) URI, e.g. ``sqlite:///mlflow.db``.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ------------------------------------------------------------------ reading

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first."""
        aliases = self._aliases(name)
        found: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = self._call("search versions", self.client.search_model_versions, f"name='{_escape(name)}'",
                              page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: int(v.version), reverse=True)

    def show(self, name: str, version: str) -> VersionInfo:
        """One version."""
        return self._info(self._version(name, version), self._aliases(name))

    def report(self, name: str, version: str) -> dict[str, Any] | None:
        """The version's validation report (``validation/report.json`` of its run), or None."""
        data = self._report_bytes(self._version(name, version))
        return None if data is None else json.loads(data)

    def report_sha256(self, name: str, version: str) -> str | None:
        """SHA-256 of ``report.json`` as stored in the run's artifacts, or None without one."""
        data = self._report_bytes(self._version(name, version))
        return None if data is None else hashlib.sha256(data).hexdigest()

    def read_report(self, name: str, version: str, reader: Identity) -> tuple[dict[str, Any], str] | None:
        """The report and a read receipt for ``reader`` (what approval needs), or None without one."""
        data = self._report_bytes(self._version(name, version))
        if data is None:
            return None
        return json.loads(data), issue_receipt(reader.key_id, name, str(version), hashlib.sha256(data).hexdigest())

    def receipt(self, name: str, version: str, reader: Identity) -> str | None:
        """A read receipt for ``reader`` of the version's current report (None without one)."""
        read = self.read_report(name, version, reader)
        return None if read is None else read[1]

    def report_html(self, name: str, version: str) -> str | None:
        """The version's rendered report page (``validation/report.html``), or None."""
        data = self._report_bytes(self._version(name, version), HTML_PATH)
        return None if data is None else data.decode("utf-8")

    def report_html_uri(self, name: str, version: str) -> str | None:
        """Where the version's HTML report is (its run's artifact URI), or None without a run."""
        run_id = self._run_id(self._version(name, version))
        if run_id is None:
            return None
        run = self._call("get run", self.client.get_run, run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{HTML_PATH}"

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

    # ------------------------------------------------------------------ helpers

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except MlflowException as err:
            raise TrackingError(f"MLflow {what} failed: {err.message}") from err
        except OSError as err:
            raise TrackingError(f"MLflow {what} failed: {err}") from err

    def _tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("tag version", self.client.set_model_version_tag, name, str(version), key, value)

    def _model_tags(self, name: str) -> dict[str, str]:
        return dict(self._call("get registered model", self.client.get_registered_model, name).tags or {})

    def _aliases(self, name: str) -> dict[str, str]:
        try:
            model = self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise VersionNotFound(f"no registered model '{name}'") from None
            raise TrackingError(f"MLflow get registered model failed: {err.message}") from err
        return {alias: str(v) for alias, v in (model.aliases or {}).items()}

    def _version(self, name: str, version: str) -> ModelVersion:
        if not str(version).strip().isdigit():
            raise VersionNotFound(f"'{version}' is not a version number")
        try:
            return self.client.get_model_version(name, str(int(version)))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise VersionNotFound(f"no version {version} of registered model '{name}'") from None
            raise TrackingError(f"MLflow get model version failed: {err.message}") from err

    @staticmethod
    def _run_id(mv: ModelVersion) -> str | None:
        return mv.run_id or dict(mv.tags).get("run_id") or None

    def _report_bytes(self, mv: ModelVersion, path: str = REPORT_PATH) -> bytes | None:
        """One file of the version's ``validation/`` artifacts, or None without it."""
        run_id = self._run_id(mv)
        if run_id is None:
            return None
        listed = self._call("list artifacts", self.client.list_artifacts, run_id, VALIDATION_DIR)
        if not any(f.path == path and not f.is_dir for f in listed):
            return None
        with tempfile.TemporaryDirectory(prefix="bioverse-review-") as tmp:
            local = self._call("download report", self.client.download_artifacts, run_id, path, tmp)
            return Path(local).read_bytes()

    def _info(self, mv: ModelVersion, aliases: dict[str, str]) -> VersionInfo:
        tags = dict(mv.tags)
        status = tags.get("review_status", PENDING)
        decided = status != PENDING  # review.* tags of a decision that failed midway mean nothing
        return VersionInfo(
            name=mv.name,
            version=str(mv.version),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc),
            review_status=status,
            validation_status=tags.get("validation.status", "missing"),
            auroc=_float(tags.get("validation.auroc")),
            calibration_slope=_float(tags.get("validation.calibration_slope")),
            epsilon=_float(tags.get("epsilon")),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == str(mv.version))),
            launched_by=tags.get("launched_by") or None,
            run_id=self._run_id(mv),
            experiment=tags.get("experiment") or None,
            decided_by=(tags.get("review.decided_by") or None) if decided else None,
            decided_at=(tags.get("review.decided_at") or None) if decided else None,
            rationale=(tags.get("review.rationale") or None) if decided else None,
            report_sha256=tags.get("validation.report_sha256") or None,
            tags=tags,
            quality_warning=(tags.get(QUALITY_TAG) or "").strip() or None,
            gate_warning=self._gate_warning(mv, aliases),
        )

    @staticmethod
    def _gate_warning(mv: ModelVersion, aliases: dict[str, str]) -> str | None:
        """:data:`UNAPPROVED_PRODUCTION` (and why) when ``production`` points here without a valid approval."""
        if aliases.get(PRODUCTION_ALIAS) != str(mv.version):
            return None
        problem = approval_problem(dict(mv.tags), mv.name, str(mv.version), source=str(mv.source), scope=None)
        return None if problem is None else f"{UNAPPROVED_PRODUCTION}: {problem}"
