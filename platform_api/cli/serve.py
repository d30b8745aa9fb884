"""``bioverse serve``: Ray Serve's risk and vision applications, on one box (up) or a Ray cluster (deploy, status)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from platform_api.cli.output import exec_server, one_line_errors, out

__all__ = ["serve_app"]

serve_app = typer.Typer(help="Ray Serve: the model deployments.", no_args_is_help=True)


#: The Ray dashboard of a cluster's head (``ray start --head --dashboard-host 0.0.0.0``).
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

ModelOpt = Annotated[str, typer.Option(help="Registered model to serve.")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias to follow.")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow URI (default: the embedded store).")]
ConfigOpt = Annotated[Path | None, typer.Option(help="A Serve config file (default: serving/serve_config.yaml).")]
VisionOpt = Annotated[str, typer.Option(help="Registered image classifier to serve at /vision ('none': no vision; "
                                             "left out when it has no version under the alias).")]
AddressOpt = Annotated[str, typer.Option(envvar="RAY_DASHBOARD_ADDRESS",
                                         help="The Ray dashboard of the cluster's head, http://HEAD:8265.")]


def _checked_config(*, model: str, alias: str, tracking_uri: str | None, port: int, config: Path | None,
                    vision_model: str, http_host: str | None = None) -> tuple[dict[str, Any], str, str | None]:
    """The Serve config to apply, after the model checks (servable version; vision left out
    when none): the config, the risk version and the vision version (None: not served)."""
    from experiments.settings import get_settings
    from serving.local_config import PACKAGED_CONFIG, local_serve_config, servable_version, vision_to_serve

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    version = servable_version(uri, model, alias)  # fail here, in one line, not in a replica
    vision_version, left_out = vision_to_serve(uri, vision_model, alias)
    if left_out:
        out.print(left_out, highlight=False)
    settings = local_serve_config(config or PACKAGED_CONFIG, port=port, tracking_uri=uri, alias=alias, risk_model=model,
                                  vision_model=vision_model if vision_version is not None else None,
                                  http_host=http_host)
    return settings, version, vision_version


@serve_app.command("up")
@one_line_errors
def serve_up(
    model: ModelOpt = "cardiac-risk",
    alias: AliasOpt = "production",
    tracking_uri: TrackingOpt = None,
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy.")] = 8000,
    config: ConfigOpt = None,
    vision_model: VisionOpt = "chest-xray",
) -> None:
    """Start Ray Serve locally: the risk application (POST /risk {"instances": [...]}) and the
    vision application (POST /vision with a PNG/JPEG body), each following the alias."""
    import yaml

    from experiments.settings import get_settings

    settings, version, vision_version = _checked_config(model=model, alias=alias, tracking_uri=tracking_uri, port=port,
                                                        config=config, vision_model=vision_model)
    run_dir = get_settings().data_dir / "serve"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "serve_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    out.print(f"Serving {model}@{alias} (version {version}) on http://127.0.0.1:{port}/risk", highlight=False)
    if vision_version is not None:
        out.print(f"Serving {vision_model}@{alias} (version {vision_version}) on http://127.0.0.1:{port}/vision", highlight=False)
    exec_server([str(Path(sys.executable).parent / "serve"), "run", str(run_dir / "serve_config.yaml")])


@serve_app.command("deploy")
@one_line_errors
def serve_deploy(
    address: AddressOpt = DEFAULT_ADDRESS,
    model: ModelOpt = "cardiac-risk",
    alias: AliasOpt = "production",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI every node reaches (an MLflow server or a "
                                                          "shared store; default: the embedded store).")] = None,
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxies.")] = 8000,
    http_host: Annotated[str, typer.Option(help="Address the Serve proxies listen on.")] = "0.0.0.0",
    config: ConfigOpt = None,
    vision_model: VisionOpt = "chest-xray",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the applications to be RUNNING.")] = 300,
) -> None:
    """Apply the Serve config to a running Ray cluster (declaratively, as `serve deploy`) and
    wait until its applications are RUNNING; then show where the replicas run."""
    from serving.cluster import ServeCluster

    settings, version, vision_version = _checked_config(model=model, alias=alias, tracking_uri=tracking_uri, port=port,
                                                        config=config, vision_model=vision_model, http_host=http_host)
    cluster = ServeCluster(address)
    cluster.details()  # unreachable: one line before anything is sent
    views = cluster.deploy(settings, timeout=timeout)
    out.print(f"Deployed {model}@{alias} (version {version}) to {cluster.address}: route /risk on port {port}",
              highlight=False)
    if vision_version is not None:
        out.print(f"Deployed {vision_model}@{alias} (version {vision_version}): route /vision", highlight=False)
    _print_status(views)


@serve_app.command("status")
@one_line_errors
def serve_status(
    address: AddressOpt = DEFAULT_ADDRESS,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Applications, deployments and replicas on the cluster: each replica's node and state,
    and each deployment's autoscaling target."""
    from serving.cluster import ServeCluster

    views = ServeCluster(address).deployments()
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in views]))
        return
    if not views:
        out.print("No Serve applications on this cluster.", highlight=False)
        return
    _print_status(views)


def _print_status(views: list[Any]) -> None:
    """One block per deployment: its application, its replica target and bounds, its replicas' nodes."""
    for view in views:
        bounds = "" if view.min_replicas is None else (
            f", min {view.min_replicas}, max {view.max_replicas}, target_ongoing_requests {view.target_ongoing_requests:g}")
        out.print(f"{view.application} ({view.route_prefix}) {view.application_status}: {view.name} {view.status}, "
                  f"{len(view.replicas)} replicas (target {view.target_replicas}{bounds})", highlight=False)
        if view.message:
            out.print(f"  {view.message}", highlight=False)
        for replica in view.replicas:
            out.print(f"  {replica.replica_id}  {replica.state:<10} node {replica.node_ip} ({(replica.node_id or '')[:12]})",
                      highlight=False)
