"""``bioverse coordinator``: set up and run a federation's coordinator (CA, SuperLink, proxy, hospitals)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from platform_api.cli.output import one_line_errors, out, warn

if TYPE_CHECKING:
    from federation.coordinator_service import Coordinator
    from federation.coordinator_setup import CoordinatorConfig

__all__ = ["coordinator_app"]

coordinator_app = typer.Typer(help="The coordinator: its CA, SuperLink, reverse proxy and the hospitals it admits.",
                              no_args_is_help=True)

DirOption = Annotated[Path, typer.Option("--dir", help="The coordinator's folder (config, CA, certificates, database).")]
_DEFAULT_DIR = Path("coordinator")


def _say(text: str) -> None:
    out.print(text, highlight=False, markup=False)


def _running(config: CoordinatorConfig) -> bool:
    from federation.control_api import is_listening

    return is_listening(config.superlink_address)


@coordinator_app.command("init")
@one_line_errors
def coordinator_init(
    public_address: Annotated[str, typer.Option(help="HOST[:PORT] hospitals dial (DNS name or IP; port default 9092).")],
    directory: DirOption = _DEFAULT_DIR,
    name: Annotated[str, typer.Option(help="The federation's name (in the CA's subject).")] = "bioverse",
    superlink_port: Annotated[int, typer.Option(help="The SuperLink's port on 127.0.0.1 (never exposed).")] = 9093,
    listen_host: Annotated[str | None, typer.Option(
        help="Address nginx binds (default: the public host if it is an IP address, else all addresses).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing coordinator's CA and certificate (hospitals kept).")] = False,
) -> None:
    """Create the coordinator: a CA, a certificate for the public address, a config."""
    from federation.coordinator_setup import init_coordinator

    config = init_coordinator(directory, public_address, name=name, force=force, superlink_port=superlink_port,
                              listen_host=listen_host)
    _say(f"coordinator {config.name} in {config.directory}: hospitals dial {config.public_address}")
    _say(f"hand every hospital: the CA certificate {config.ca_cert} and the address {config.public_address}")
    _say(f"keep private: {config.ca_key} and {config.server_key}")
    _say(f"next: bioverse coordinator add-hospital NAME KEY.pub --dir {directory}; bioverse coordinator start --dir {directory}")


@coordinator_app.command("add-hospital")
@one_line_errors
def coordinator_add_hospital(
    name: Annotated[str, typer.Argument(help="The hospital's id, as experiment specs list it.")],
    key: Annotated[Path, typer.Argument(help="The hospital's node public key (OpenSSH ECDSA, the .pub file).")],
    directory: DirOption = _DEFAULT_DIR,
) -> None:
    """Admit a hospital's node key (registered with the SuperLink now if it runs, else at start)."""
    from federation.control_api import register_node
    from federation.coordinator_setup import add_hospital, load_coordinator, remove_hospital
    from federation.errors import CoordinatorError
    from federation.pki import parse_node_key

    config = load_coordinator(directory)
    hospital = add_hospital(config, name, key)
    if not _running(config):
        _say(f"admitted {name} (key {hospital.fingerprint}); registered with the SuperLink at the next start")
        return
    try:
        node_id = register_node(config.superlink_address, config.ca_cert, parse_node_key(hospital.key.encode()).pem, name)
    except CoordinatorError:
        remove_hospital(config, name)
        raise
    _say(f"admitted {name} (key {hospital.fingerprint}): node {node_id} on the running SuperLink")


@coordinator_app.command("remove-hospital")
@one_line_errors
def coordinator_remove_hospital(
    name: Annotated[str, typer.Argument(help="The admitted hospital to remove.")],
    directory: DirOption = _DEFAULT_DIR,
) -> None:
    """Stop admitting a hospital (unregistered from the running SuperLink at once)."""
    from federation.control_api import unregister_node
    from federation.coordinator_setup import load_coordinator, remove_hospital
    from federation.pki import parse_node_key

    config = load_coordinator(directory)
    hospital = remove_hospital(config, name)
    if _running(config):
        node_id = unregister_node(config.superlink_address, config.ca_cert, parse_node_key(hospital.key.encode()).pem)
        _say(f"removed {name}" + (f": node {node_id} unregistered" if node_id is not None else ""))
    else:
        _say(f"removed {name} (the SuperLink is not running; it will not be registered at start)")


@coordinator_app.command("hospitals")
@one_line_errors
def coordinator_hospitals(directory: DirOption = _DEFAULT_DIR) -> None:
    """List the admitted hospitals (with node ids and status while the SuperLink runs)."""
    from federation.control_api import list_nodes
    from federation.coordinator_setup import load_coordinator, load_hospitals
    from federation.pki import parse_node_key

    config = load_coordinator(directory)
    hospitals = load_hospitals(config)
    running = _running(config)
    nodes = {n.public_key_pem: n for n in list_nodes(config.superlink_address, config.ca_cert)} if running else {}
    for h in hospitals:
        node = nodes.get(parse_node_key(h.key.encode(), h.name).pem)
        if node is not None and node.status == "unregistered":
            where = "refused: this key was removed before, the hospital needs a new key"
        else:
            where = f"node {node.node_id} {node.status}" if node else ("not registered" if running else "SuperLink not running")
        _say(f"{h.name:<20} {h.fingerprint}  added {h.added_at}  {where}")
    if not hospitals:
        _say(f"no hospitals admitted yet (bioverse coordinator add-hospital NAME KEY.pub --dir {directory})")


@coordinator_app.command("start")
@one_line_errors
def coordinator_start(directory: DirOption = _DEFAULT_DIR) -> None:
    """Run the SuperLink on loopback (TLS, node auth, database) and nginx on the public address,
    passing only the Fleet API; in the foreground until SIGTERM or Ctrl-C."""
    from federation.coordinator_service import serve
    from federation.coordinator_setup import load_coordinator

    config = load_coordinator(directory)

    def ready(coordinator: Coordinator) -> None:
        for problem in coordinator.problems:
            warn(f"not admitted: {problem}")
        _say(f"coordinator ready: {len(coordinator.node_ids)} hospitals admitted; hospitals dial {config.public_address} "
             f"(Fleet API only); SuperLink on {config.superlink_address}; logs in {config.run_dir}")
        _say(f"launch experiments here: bioverse experiment run SPEC --coordinator {directory}")

    serve(config, ready)
    _say("coordinator stopped")


@coordinator_app.command("audit-heads")
@one_line_errors
def coordinator_audit_heads(
    run_id: Annotated[str, typer.Argument(help="The federated run (see `bioverse experiment runs`).")],
    hospital: Annotated[str | None, typer.Option(help="Only this hospital's heads: the file it is given.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the anchors file here (default: print it).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
) -> None:
    """Export the audit-chain heads the run's hospitals sent with their replies: the anchors a
    hospital checks its log against (bioverse hospital audit verify --anchors FILE)."""
    import json

    from experiments.settings import get_settings
    from federation.audit_heads import anchors_document, stored_heads

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    document = anchors_document(run_id, stored_heads(uri, run_id), hospital)
    text = json.dumps(document, indent=1) + "\n"
    if out_file is None:
        out.print(text, end="", highlight=False, markup=False)
        return
    out_file.write_text(text)
    held = {hospital: document["heads"]} if hospital else document["hospitals"]
    _say(f"{sum(len(h) for h in held.values())} heads from {', '.join(sorted(held))} in run {run_id} -> {out_file}")
