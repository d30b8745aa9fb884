"""The review gate's proofs: identities, read receipts and approval MACs (docs/review.md)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.errors import ExperimentError, ReceiptInvalid
from experiments.keys import mac, secret_key, verify_mac

__all__ = [
    "APPROVAL_TAG",
    "PLATFORM_SCOPE",
    "RECEIPT_SECONDS",
    "TENANT_TAG",
    "Identity",
    "approval_problem",
    "artifact_digest",
    "download_version",
    "issue_receipt",
    "mark_approved",
    "os_identity",
    "parse_identity",
    "read_receipt",
    "sign_approval",
]

APPROVAL_TAG = "review.approval"
#: Registered-model tag naming the tenant a model belongs to; without it a model is platform-wide.
TENANT_TAG = "bioverse.tenant"
PLATFORM_SCOPE = "platform"
#: How long a read receipt stays valid (seconds).
RECEIPT_SECONDS = 4 * 3600
_PURPOSE = "gate"


@dataclass(frozen=True)
class Identity:
    """Who launched or decided: an API key (``kind="key"``) or an OS login (``kind="os"``)."""

    kind: str
    person: str
    key_id: str = ""
    tenant_id: str | None = None

    @property
    def tag(self) -> str:
        """The identity as a tag value (``key:<id>/<person>`` or ``os:<login>``)."""
        return f"key:{self.key_id}/{self.person}" if self.kind == "key" else f"os:{self.person}"

    @property
    def display(self) -> str:
        """For people: ``Dr Quinn (key 3f2a...)`` or ``bob (OS login, unauthenticated)``."""
        if self.kind == "key":
            return f"{self.person or 'unnamed key'} (key {self.key_id})"
        return f"{self.person} (OS login, unauthenticated)"

    @property
    def scope(self) -> str:
        """What this principal may approve: ``platform`` (no tenant) or ``tenant:<id>``."""
        return PLATFORM_SCOPE if self.tenant_id is None else f"tenant:{self.tenant_id}"

    def same_person(self, other: Identity) -> bool:
        """Same key, or same person name (case and spacing ignored); both must be keys."""
        if self.kind != "key" or other.kind != "key":
            raise ValueError("only API-key identities can be compared")
        return self.key_id == other.key_id or (bool(_norm(self.person)) and _norm(self.person) == _norm(other.person))


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def os_identity(login: str) -> Identity:
    """An unauthenticated OS login."""
    return Identity("os", login.strip() or "unknown")


def parse_identity(value: str | None) -> Identity | None:
    """The identity a tag value records; a legacy bare name reads as an OS login; None if empty."""
    value = (value or "").strip()
    if not value or value.casefold() == "unknown":
        return None
    if value.startswith("key:") and "/" in value:
        key_id, person = value[4:].split("/", 1)
        if key_id:
            return Identity("key", person.strip(), key_id)
    if value.startswith("os:"):
        return os_identity(value[3:])
    return os_identity(value)


# ---------------------------------------------------------------- read receipts


def _receipt_message(key_id: str, name: str, version: str, sha: str, expires: int) -> str:
    return f"receipt|{key_id}|{name}|{version}|{sha}|{expires}"


def issue_receipt(key_id: str, name: str, version: str, report_sha256: str, *, now: float | None = None) -> str:
    """A receipt proving ``key_id`` fetched the report with ``report_sha256`` of ``name``/``version``."""
    expires = int(now if now is not None else time.time()) + RECEIPT_SECONDS
    tag = mac(secret_key(_PURPOSE), _receipt_message(key_id, name, str(version), report_sha256, expires))
    return f"{report_sha256}.{expires}.{tag}"


def read_receipt(receipt: str | None, key_id: str, name: str, version: str, *, now: float | None = None) -> str:
    """The report sha256 a valid receipt vouches for.

    Raises:
        ReceiptInvalid: missing, malformed, expired, forged, or issued to another reader/version.
    """
    parts = (receipt or "").strip().split(".")
    if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
        raise ReceiptInvalid("a report receipt is required: fetch the version's report (it comes with one) and "
                             "decide with that receipt")
    sha, expires, tag = parts[0].lower(), int(parts[1]), parts[2]
    if not verify_mac(secret_key(_PURPOSE), _receipt_message(key_id, name, str(version), sha, expires), tag):
        raise ReceiptInvalid(f"the report receipt was not issued to you for {name} version {version}; "
                             "fetch the report yourself and decide with its receipt")
    if (now if now is not None else time.time()) > expires:
        raise ReceiptInvalid("the report receipt expired; fetch the report again")
    return sha


# ---------------------------------------------------------------- approvals


def download_version(tracking_uri: str, name: str, version: str, dst: Path) -> Path:
    """Download ``models:/<name>/<version>`` (what every loader loads) into ``dst``.

    MLflow resolves ``models:/`` URIs through the process-wide registry URI (whatever is passed
    to the repository), so this sets the process's tracking and registry URIs, as loaders did.
    """
    import mlflow
    import mlflow.artifacts

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def artifact_digest(directory: Path) -> str:
    """SHA-256 over every file under ``directory`` (relative path and content hash, sorted)."""
    outer = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{path.relative_to(directory).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def _approval_message(name: str, version: str, source: str, digest: str, report_sha256: str, scope: str) -> str:
    return f"approval|{name}|{version}|{source}|{digest}|{report_sha256}|{scope}"


def sign_approval(name: str, version: str, *, source: str, digest: str, report_sha256: str, scope: str) -> str:
    """The ``review.approval`` tag value for an approved version."""
    tag = mac(secret_key(_PURPOSE), _approval_message(name, str(version), source, digest, report_sha256, scope))
    return f"v1 {scope} {digest} {tag}"


def mark_approved(tracking_uri: str, name: str, version: str, *, report_sha256: str = "none",
                  scope: str = PLATFORM_SCOPE) -> None:
    """Sign and tag a version approved, as the gate does, without a review: for set-ups whose
    subject is serving, not review (test fixtures, benchmarks). It needs the gate key, which is
    what any approval needs; the review workflow is :class:`experiments.registry.ModelRegistry`."""
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        digest = artifact_digest(download_version(tracking_uri, name, version, Path(tmp)))
    client.set_model_version_tag(name, version, "review.report_sha256", report_sha256)
    client.set_model_version_tag(name, version, APPROVAL_TAG, sign_approval(
        name, version, source=str(mv.source), digest=digest, report_sha256=report_sha256, scope=scope))
    client.set_model_version_tag(name, version, "review_status", "approved")


def approval_problem(tags: dict[str, str], name: str, version: str, *, source: str, digest: str | None = None,
                     scope: str | None = PLATFORM_SCOPE) -> str | None:
    """Why the version has no valid approval, or None if it has one.

    ``digest``: the digest of the files about to be loaded (None: trust the one in the tag,
    for reports that do not download the model). ``scope``: the scope the loader serves
    (None accepts any).
    """
    if tags.get("review_status") != "approved":
        return f"{name} version {version} is {tags.get('review_status', 'pending')}, not approved"
    parts = tags.get(APPROVAL_TAG, "").split(" ")
    if len(parts) != 4 or parts[0] != "v1":
        return f"{name} version {version} carries no approval signed by the gate"
    _, signed_scope, signed_digest, tag = parts
    message = _approval_message(name, str(version), source, signed_digest, tags.get("review.report_sha256", ""), signed_scope)
    try:
        key = secret_key(_PURPOSE, create=False)
    except ExperimentError as err:
        return f"the gate key is not available here ({err})"
    if not verify_mac(key, message, tag):
        return f"{name} version {version}: the approval does not verify (forged or copied tag)"
    if digest is not None and digest != signed_digest:
        return f"{name} version {version}: the model files changed since approval"
    if scope is not None and signed_scope != scope:
        return f"{name} version {version} was approved for {signed_scope}, not {scope}"
    return None
