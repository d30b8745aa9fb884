"""``bioverse serve``: Ray Serve's risk and vision applications, following a registry alias."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.output import exec_server, one_line_errors, out

__all__ = ["serve_app"]

serve_app = typer.Typer(help="Ray Serve: the model deployments.", no_args_is_help=True)


def _servable_vision(uri: str, vision_model: str, alias: str) -> str | None:
    """The vision model's version under ``alias`` if it may be served; else None, said on the console."""
    from serving.errors import ModelNotReadyError, UnapprovedVersion
    from serving.model_source import RegistryModel

    if vision_model.lower() == "none":
        return None
    try:
        vision = RegistryModel(uri, vision_model, alias)
        version = vision.current_version()
        vision.check_servable(version)
    except UnapprovedVersion as refused:
        out.print(f"Not serving the vision application: {refused}", highlight=False)
        return None
    except ModelNotReadyError:
        out.print(f"No {vision_model}@{alias}: serving without the vision application", highlight=False)
        return None
    return version


@serve_app.command("up")
@one_line_errors
def serve_up(
    model: Annotated[str, typer.Option(help="Registered model to serve.")] = "cardiac-risk",
    alias: Annotated[str, typer.Option(help="Registry alias to follow.")] = "production",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: the embedded store).")] = None,
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy.")] = 8000,
    config: Annotated[Path | None, typer.Option(help="A Serve config file (default: serving/serve_config.yaml).")] = None,
    vision_model: Annotated[str, typer.Option(help="Registered image classifier to serve at /vision ('none': no vision; "
                                                   "left out when it has no version under the alias).")] = "chest-xray",
) -> None:
    """Start Ray Serve locally: the risk application (POST /risk {"instances": [...]}) and the
    vision application (POST /vision with a PNG/JPEG body), each following the alias."""
    import yaml

    import serving
    from experiments.settings import get_settings
    from serving.model_source import RegistryModel

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    risk = RegistryModel(uri, model, alias)
    version = risk.current_version()  # fail here, in one line, not in a replica
    risk.check_servable(version)  # an alias moved past the review gate: refused here too
    vision_version = _servable_vision(uri, vision_model, alias)
    source = config or Path(serving.__file__).resolve().parent / "serve_config.yaml"
    settings = yaml.safe_load(source.read_text())
    settings.setdefault("http_options", {})["port"] = port
    if vision_version is None:
        settings["applications"] = [a for a in settings["applications"] if a["name"] != "vision"]
    for application in settings["applications"]:
        if application["name"] == "risk":
            application.setdefault("args", {}).update(model_name=model, alias=alias, tracking_uri=uri)
        if application["name"] == "vision":
            application.setdefault("args", {}).update(model_name=vision_model, alias=alias, tracking_uri=uri)
    run_dir = get_settings().data_dir / "serve"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "serve_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    out.print(f"Serving {model}@{alias} (version {version}) on http://127.0.0.1:{port}/risk", highlight=False)
    if vision_version is not None:
        out.print(f"Serving {vision_model}@{alias} (version {vision_version}) on http://127.0.0.1:{port}/vision", highlight=False)
    exec_server([str(Path(sys.executable).parent / "serve"), "run", str(run_dir / "serve_config.yaml")])
