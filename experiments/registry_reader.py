"""Reading the registry: versions, their validation reports and read receipts (MLflow registry)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.errors import TrackingError, VersionNotFound
from experiments.gate import Identity, approval_problem, issue_receipt
from experiments.names import VALIDATION_DIR
from experiments.review_records import VersionInfo

__all__ = ["APPROVED", "HTML_PATH", "PENDING", "PRODUCTION_ALIAS", "QUALITY_TAG", "REJECTED", "REPORT_PATH",
           "UNAPPROVED_PRODUCTION", "RegistryReader"]

PRODUCTION_ALIAS = "production"
REPORT_PATH = f"{VALIDATION_DIR}/report.json"
HTML_PATH = f"{VALIDATION_DIR}/report.html"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
QUALITY_TAG = "validation.quality_warning"
UNAPPROVED_PRODUCTION = "production alias without approval"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace("'", "\\'")


T = TypeVar("T")


class RegistryReader:
    """The registered versions of one MLflow registry and their validation reports, read only.

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
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
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
