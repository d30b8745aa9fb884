"""``bioverse serve``: Ray Serve's risk and vision applications, following a registry alias."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.output import exec_server, one_line_errors, out

__all__ = ["serve_app"]

serve_app = typer.Typer(help="Ray Serve: the model deployments.", no_args_is_help=True)


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

    from experiments.settings import get_settings
    from serving.local_config import PACKAGED_CONFIG, local_serve_config, servable_version, vision_to_serve

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    version = servable_version(uri, model, alias)  # fail here, in one line, not in a replica
    vision_version, left_out = vision_to_serve(uri, vision_model, alias)
    if left_out:
        out.print(left_out, highlight=False)
    settings = local_serve_config(config or PACKAGED_CONFIG, port=port, tracking_uri=uri, alias=alias, risk_model=model,
                                  vision_model=vision_model if vision_version is not None else None)
    run_dir = get_settings().data_dir / "serve"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "serve_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    out.print(f"Serving {model}@{alias} (version {version}) on http://127.0.0.1:{port}/risk", highlight=False)
    if vision_version is not None:
        out.print(f"Serving {vision_model}@{alias} (version {vision_version}) on http://127.0.0.1:{port}/vision", highlight=False)
    exec_server([str(Path(sys.executable).parent / "serve"), "run", str(run_dir / "serve_config.yaml")])
