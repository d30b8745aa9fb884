"""One registered version from the MLflow registry, downloaded and loaded through the review gate."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import overload

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.gate import APPROVAL_TAG, PLATFORM_SCOPE, approval_problem, artifact_digest, download_version
from experiments.names import CANDIDATE_ALIAS
from serving.errors import ModelNotReadyError, UnapprovedVersion
from serving.loaded import M, ServedModel, load_package, package_folder

__all__ = ["RegistryModel"]

log = logging.getLogger(__name__)

_KIND_NAMES = {"LoadedModel": "risk model", "LoadedVisionModel": "image classifier"}


class RegistryModel:
    """``models:/<name>@<alias>`` in the MLflow registry: every loader of a registered version
    (the API, the Serve deployments, bulk scoring, the CLI) goes through :meth:`load`.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: Registered model name.
        alias: The alias to serve (``production`` once a validator approves a version).
        require_approval: Load only versions the gate approved (default: for every alias but
            ``candidate``); False for tools that evaluate a given version (``registry validate``).
        scope: The approval scope served (``platform``: approved by a validator of no tenant).
    """

    def __init__(self, tracking_uri: str, name: str, alias: str = "production", *,
                 require_approval: bool | None = None, scope: str = PLATFORM_SCOPE) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.require_approval = alias != CANDIDATE_ALIAS if require_approval is None else require_approval
        self.scope = scope
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def current_version(self) -> str:
        """The version the alias points at now.

        Raises:
            ModelNotReadyError: the model or the alias does not exist.
        """
        return self.current_marker()[0]

    def current_marker(self) -> tuple[str, str]:
        """The version the alias points at and its approval tag: a refused version is tried
        again only once its approval changes (a validator approved it after all).

        Raises:
            ModelNotReadyError: the model or the alias does not exist.
        """
        try:
            mv = self.client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as err:
            raise ModelNotReadyError(f"no version of model {self.name!r} has the alias {self.alias!r}") from err
        return str(mv.version), dict(mv.tags or {}).get(APPROVAL_TAG, "")

    @overload
    def load(self, version: str) -> ServedModel: ...

    @overload
    def load(self, version: str, kind: type[M]) -> M: ...

    def load(self, version: str, kind: type[M] | None = None) -> ServedModel:
        """Download one version, check its approval (when required) and build the scorer its
        package calls for (:func:`serving.loaded.load_package`).

        Args:
            version: The registry version.
            kind: The kind the caller serves (``LoadedModel`` or ``LoadedVisionModel``); a
                package of another kind is not ready to serve there.

        Raises:
            UnapprovedVersion: approval required and the version has no valid one.
            ModelNotReadyError: the version is missing, not a BioVerse model package, or not of ``kind``.
        """
        with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
            local = self._download(version, Path(tmp))
            if self.require_approval:
                self.check_approval(str(version), local)
            try:
                loaded = load_package(self.name, str(version), package_folder(local))
            except (MlflowException, OSError, KeyError, ValueError, RuntimeError) as err:
                raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err}") from err
        if kind is not None and not isinstance(loaded, kind):
            raise ModelNotReadyError(f"{self.name} version {version} cannot be served here: it is not a BioVerse "
                                     f"{_KIND_NAMES[kind.__name__]}")
        log.info("loaded %s version %s", self.name, version)
        return loaded

    def load_current(self, kind: type[M]) -> M:
        """Load the version the alias points at now (:meth:`load`).

        Raises:
            UnapprovedVersion: approval required and the version has no valid one.
            ModelNotReadyError: no such model or alias, or the version cannot be served as ``kind``.
        """
        return self.load(self.current_version(), kind)

    def check_approval(self, version: str, local: Path) -> None:
        """Raise :class:`UnapprovedVersion` unless the files in ``local`` are the approved version."""
        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as err:
            raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err.message}") from err
        problem = approval_problem(dict(mv.tags), self.name, str(version), source=str(mv.source),
                                   digest=artifact_digest(local), scope=self.scope)
        if problem is not None:
            log.error("REFUSED %s@%s -> version %s: %s (production alias without approval; moved outside the "
                      "review gate?)", self.name, self.alias, version, problem)
            raise UnapprovedVersion(f"{self.name}@{self.alias} points at version {version}, which serving refuses: "
                                    f"{problem} (production alias without approval)")

    def check_servable(self, version: str) -> None:
        """Download ``version`` and check its approval (when required) without loading it: a
        start-up check, so that a refusal is one line there rather than in every replica.

        Raises:
            UnapprovedVersion: approval required and the version has no valid one.
            ModelNotReadyError: the version cannot be downloaded.
        """
        if self.require_approval:
            with tempfile.TemporaryDirectory(prefix="bioverse-model-") as tmp:
                self.check_approval(str(version), self._download(version, Path(tmp)))

    def _download(self, version: str, dst: Path) -> Path:
        try:
            return download_version(self.tracking_uri, self.name, str(version), dst)
        except (MlflowException, OSError) as err:
            raise ModelNotReadyError(f"{self.name} version {version} cannot be served: {err}") from err
