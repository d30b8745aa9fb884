"""``bioverse hospital``: join a federation as a hospital, run its node, see and audit what touched its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.output import one_line_errors, out

__all__ = ["hospital_app"]

hospital_app = typer.Typer(help="A hospital's node: join a federation, start it, its status, policy and audit log.",
                           no_args_is_help=True)
audit_app = typer.Typer(help="The hospital's hash-chained audit log of every request on its data.", no_args_is_help=True)
hospital_app.add_typer(audit_app, name="audit")

DirOption = Annotated[Path | None, typer.Option("--dir", help="The node folder (default: $BIOVERSE_DATA_DIR/hospital).")]


def _directory(directory: Path | None) -> Path:
    if directory is not None:
        return directory
    from experiments.settings import get_settings

    return get_settings().data_dir / "hospital"


@hospital_app.command("join")
@one_line_errors
def hospital_join(
    coordinator: Annotated[str, typer.Option(help="The coordinator's Fleet address, HOST:PORT, as its certificate names it.")],
    ca_cert: Annotated[Path, typer.Option(help="The coordinator's CA certificate (PEM), as its operator sent it.")],
    hospital_id: Annotated[str, typer.Option(help="This hospital's id, as experiment specs list it.")],
    data_path: Annotated[Path, typer.Option(help="This hospital's data: a CSV or Parquet file, or an image folder.")],
    privacy_budget: Annotated[float, typer.Option(help="Total epsilon this hospital allows on its data, all runs together.")],
    directory: DirOption = None,
    max_epsilon_per_run: Annotated[float | None, typer.Option(
        help="Policy: the largest epsilon one run may ask for (default: 5, or the budget if smaller).")] = None,
    allow_model_kind: Annotated[list[str] | None, typer.Option(
        help="Policy: a model kind runs may train (repeat; default: any).")] = None,
    allow_strategy: Annotated[list[str] | None, typer.Option(
        help="Policy: an aggregation strategy runs may use (repeat; default: any).")] = None,
    min_cell: Annotated[int, typer.Option(help="Policy: the smallest subgroup cell validation counts may show.")] = 10,
    allow_images: Annotated[bool | None, typer.Option(
        "--allow-images/--no-images", help="Policy: whether runs may use images (default: yes for an image folder).")] = None,
    port: Annotated[int, typer.Option(help="Port of the SuperNode's local runtime API (loopback).")] = 9094,
) -> None:
    """Make this hospital's node: key pair, the coordinator's CA, node config with site policy,
    and service files (systemd unit, compose service). Send the public key to the coordinator."""
    from federation.hospital_join import JoinRequest, join

    joined = join(JoinRequest(
        coordinator=coordinator, ca_cert=ca_cert, hospital_id=hospital_id, data_path=data_path,
        privacy_budget=privacy_budget, directory=_directory(directory), max_epsilon_per_run=max_epsilon_per_run,
        allowed_model_kinds=tuple(allow_model_kind) if allow_model_kind else None,
        allowed_strategies=tuple(allow_strategy) if allow_strategy else None, min_cell=min_cell,
        allow_images=allow_images, runtime_port=port))
    say = lambda text: out.print(text, highlight=False, markup=False)  # noqa: E731
    say(f"node config:  {joined.node_config}")
    say(f"systemd unit: {joined.systemd_unit}")
    say(f"compose file: {joined.compose_file}")
    say(f"public key:   {joined.public_key}" + ("" if joined.new_key else " (kept: this node had a key already)"))
    say(f"send {joined.public_key.name} to the coordinator's operator, who runs:")
    say(f"  {joined.register_line}")
    say(f"then: bioverse hospital start --dir {joined.node_config.parent}")


@hospital_app.command("start")
@one_line_errors
def hospital_start(
    directory: DirOption = None,
    insecure: Annotated[bool, typer.Option(help="No TLS, no node key: development on loopback only.")] = False,
) -> None:
    """Check the data, the CA and the coordinator's certificate, then run this hospital's
    SuperNode (TLS, signed requests) in the foreground until stopped."""
    from federation.hospital_node import start_node

    start_node(_directory(directory), insecure=insecure)


@hospital_app.command("status")
@one_line_errors
def hospital_status(directory: DirOption = None) -> None:
    """Connected or not, the coordinator's certificate, the runs that touched this hospital's
    data (its audit log) and its budget spent and left (its ledger)."""
    from federation.hospital_node import node_status

    status = node_status(_directory(directory))
    config = status.config
    say = lambda text: out.print(text, highlight=False, markup=False)  # noqa: E731
    say(f"hospital {config.hospital_id}  coordinator {config.coordinator}")
    say(("connected" if status.connected else "NOT connected") + f": {status.connection}")
    cert = status.certificate
    if cert is not None:
        say(f"certificate: {cert.subject}  names {', '.join(cert.names) or 'none'}  "
            f"expires {cert.not_after:%Y-%m-%d %H:%M} UTC  issuer {cert.issuer}")
        say(f"  sha256 {cert.sha256}")
    say(f"supernode: {status.supernode}")
    say(f"budget: {status.spent:.3f} spent, {status.left:.3f} left of {config.policy.total_budget:g} (ledger {config.ledger_path})")
    audit = "verified" if not status.audit_problems else f"BROKEN ({status.audit_problems[0]})"
    say(f"audit log: {status.audit_rows} rows, {audit}")
    if not status.runs:
        say("no run has touched this hospital's data yet")
        return
    say("runs that touched this hospital's data (its audit log):")
    say(f"  {'run':<12}  {'launcher':<20}  {'spec':<12}  {'first (UTC)':<20}  {'last (UTC)':<20}  "
        f"{'requests':>8}  {'refused':>7}  {'epsilon':>7}")
    for run in status.runs:
        say(f"  {run.run[:12]:<12}  {run.launcher[:20]:<20}  {run.spec:<12}  {run.first:<20}  {run.last:<20}  "
            f"{run.requests:>8}  {run.refused:>7}  {run.epsilon:>7.3f}")
        for reason in run.reasons:
            say(f"      refused: {reason}")


@hospital_app.command("check")
@one_line_errors
def hospital_check(
    spec_path: Annotated[Path, typer.Argument(help="An experiment spec (YAML) the coordinator plans to run.")],
    directory: DirOption = None,
) -> None:
    """Would this hospital's site policy allow the spec? The same check its node runs before any
    work, with the budget other runs have spent (its ledger); exit 1 with the reason if not."""
    from experiments.spec import load_spec
    from federation.hospital_node import spent_on_data
    from federation.node_config import load_node_config
    from federation.site_policy import check_policy, run_epsilon

    config = load_node_config(_directory(directory))
    spec = load_spec(spec_path)
    check_policy(config.policy, spec, config.hospital_id, spent_on_data(config))
    epsilon = run_epsilon(spec)
    asked = f"epsilon {epsilon:g}" if epsilon is not None else "no DP"
    out.print(f"{config.hospital_id}'s policy allows {spec.name} ({spec.model.kind}, {spec.strategy.name}, {asked})",
              highlight=False, markup=False)


@audit_app.command("verify")
@one_line_errors
def hospital_audit_verify(
    directory: DirOption = None,
    anchors: Annotated[list[Path] | None, typer.Option(
        "--anchors", help="An anchors file from the coordinator (bioverse coordinator audit-heads): every head it "
                          "holds must be in the log, in order (repeat for several runs).")] = None,
) -> None:
    """Check the audit log's hash chain: a row edited, forged, deleted, moved or cut off is
    named by its line; with --anchors, also that the heads the coordinator received are still
    in it (a log rewritten or cut after the fact, however re-hashed, fails); exit 1 then."""
    from federation.errors import AuditLogError
    from federation.node_config import load_node_config
    from federation.site_audit import AuditProblem, load_anchors, verify_anchors, verify_log

    config = load_node_config(_directory(directory))
    rows, problems = verify_log(config.audit_log)
    found = [(path, load_anchors(path, config.hospital_id)) for path in anchors or []]
    for path, held in found:
        problem = verify_anchors(config.audit_log, held)
        if problem is not None:
            problems.append(AuditProblem(problem.line, problem.what + (f" ({path})" if len(found) > 1 else "")))
    if problems:
        for problem in problems[1:]:
            out.print(f"{config.audit_log}: {problem}", highlight=False, markup=False)
        raise AuditLogError(f"{config.audit_log}: {problems[0]}")
    anchored = "".join(f"; {len(held.heads)} anchors of run {held.run[:12]} found in order" for _, held in found)
    out.print(f"{config.audit_log}: {rows} rows, the chain holds{anchored}", highlight=False, markup=False)
