"""The Serve config ``bioverse serve up|deploy`` applies: the packaged one, pointed at the chosen models, alias and port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serving.errors import ModelNotReadyError, ServingError, UnapprovedVersion
from serving.model_source import RegistryModel

__all__ = ["PACKAGED_CONFIG", "ServeConfigFileError", "local_serve_config", "servable_version", "vision_to_serve"]

#: The Serve config shipped with the package (risk and vision applications).
PACKAGED_CONFIG = Path(__file__).resolve().parent / "serve_config.yaml"


class ServeConfigFileError(ServingError):
    """A ``--config`` file that is not a Serve config (unreadable YAML, no ``applications`` list)."""


def servable_version(tracking_uri: str, model: str, alias: str) -> str:
    """The version ``alias`` points at, checked against the review gate before any replica starts.

    Raises:
        ModelNotReadyError: no version under the alias.
        UnapprovedVersion: the alias was moved past the review gate.
    """
    source = RegistryModel(tracking_uri, model, alias)
    version = source.current_version()
    source.check_servable(version)
    return version


def vision_to_serve(tracking_uri: str, model: str, alias: str) -> tuple[str | None, str | None]:
    """The vision model's servable version under ``alias``, or None and why it is left out
    (``model`` 'none': left out without a reason)."""
    if model.lower() == "none":
        return None, None
    try:
        return servable_version(tracking_uri, model, alias), None
    except UnapprovedVersion as refused:
        return None, f"Not serving the vision application: {refused}"
    except ModelNotReadyError:
        return None, f"No {model}@{alias}: serving without the vision application"


def local_serve_config(source: Path, *, port: int, tracking_uri: str, alias: str, risk_model: str,
                       vision_model: str | None, http_host: str | None = None) -> dict[str, Any]:
    """``source`` (a Serve config file) with its HTTP port, each application's model, alias and
    tracking URI set; the vision application dropped when ``vision_model`` is None.

    ``http_host`` replaces the proxy's listen address (a cluster: ``0.0.0.0``, so that the
    proxy answers on the node's address, not only its loopback).
    """
    try:
        settings = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ServeConfigFileError(f"{source}: not YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(settings, dict) or not isinstance(settings.get("applications"), list) or not all(
            isinstance(a, dict) and "name" in a for a in settings["applications"]):
        raise ServeConfigFileError(f"{source}: not a Serve config (applications: a list of named applications)")
    settings.setdefault("http_options", {})["port"] = port
    if http_host is not None:
        settings["http_options"]["host"] = http_host
    if vision_model is None:
        settings["applications"] = [a for a in settings["applications"] if a["name"] != "vision"]
    models = {"risk": risk_model, "vision": vision_model}
    for application in settings["applications"]:
        if application["name"] in models:
            application.setdefault("args", {}).update(model_name=models[application["name"]], alias=alias,
                                                      tracking_uri=tracking_uri)
    return settings
