"""``bioverse backup``: create, verify, restore and list backups of the whole installation (docs/backup.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.output import err, one_line_errors, out, warn

__all__ = ["backup_app"]

backup_app = typer.Typer(help="Backups of the platform database, MLflow, Feast and the audit anchor.", no_args_is_help=True)

Where = Annotated[str, typer.Argument(help="A folder, or s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL).")]
KeyFile = Annotated[Path | None, typer.Option(help="The backup key (32 bytes as 64 hex digits); default BIOVERSE_BACKUP_KEY.")]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@backup_app.command("create")
@one_line_errors
def backup_create(
    where: Where,
    key_file: KeyFile = None,
    encrypt: Annotated[bool, typer.Option(help="Encrypt (AES-256-GCM); needs --key-file or BIOVERSE_BACKUP_KEY.")] = False,
    name: Annotated[str | None, typer.Option(help="The backup's name (default: bioverse-<UTC time>).")] = None,
) -> None:
    """Copy the installation consistently to WHERE; the backup is listed only once complete."""
    from platform_api.backup.create import Installation, create_backup
    from platform_api.backup.crypto import load_key
    from platform_api.backup.destination import open_destination

    key = load_key(key_file, required=True) if encrypt or key_file else None
    manifest = create_backup(open_destination(where), Installation.configured(), key=key, name=name)
    for line in manifest.warnings:
        warn(line)
    counts = ", ".join(f"{manifest.row_counts.get(t, 0)} {t}" for t in ("twins", "predictions", "audit_events"))
    out.print(f"backup {manifest.name}: {len(manifest.files)} files, {_size(manifest.size)}"
              f"{', encrypted' if manifest.encrypted else ''} ({counts}) -> {where}", highlight=False)


@backup_app.command("verify")
@one_line_errors
def backup_verify(where: Where, name: Annotated[str, typer.Argument(help="The backup's name (see `backup list`).")],
                  key_file: KeyFile = None) -> None:
    """Re-hash every file against the manifest (decrypting with the key); name each fault, exit 1 if any."""
    from platform_api.backup.crypto import load_key
    from platform_api.backup.destination import open_destination
    from platform_api.backup.verify import verify_backup

    result = verify_backup(open_destination(where), name, load_key(key_file))
    for note in result.notes:
        warn(note)
    if result.ok:
        out.print(f"backup {name} intact: {len(result.manifest.files)} files, {_size(result.manifest.size)}", highlight=False)
        return
    err.print(f"[bold red]error:[/] backup {name} BROKEN: {len(result.faults)} of {len(result.manifest.files)} files", highlight=False)
    for fault in result.faults:
        err.print(f"  {fault}", highlight=False, markup=False)
    raise typer.Exit(1)


@backup_app.command("restore")
@one_line_errors
def backup_restore(
    where: Where,
    name: Annotated[str, typer.Argument(help="The backup's name (see `backup list`).")],
    key_file: KeyFile = None,
    force: Annotated[bool, typer.Option(help="Delete a non-empty target installation first.")] = False,
    keys_from: Annotated[Path | None, typer.Option(help="A keys folder to install (a plain backup holds no keys).")] = None,
    rebuild_features: Annotated[bool, typer.Option(help="Re-apply the Feast repo and materialize the online store.")] = True,
) -> None:
    """Restore into this (empty) installation: verified first, all or nothing; then the audit chain is verified."""
    from platform_api.backup.create import Installation
    from platform_api.backup.crypto import load_key
    from platform_api.backup.destination import open_destination
    from platform_api.backup.restore import restore_backup

    target = Installation.configured()
    if force:
        warn(f"--force: the installation in {target.data_dir} and its databases are DELETED before restoring")
    report = restore_backup(open_destination(where), name, target, key=load_key(key_file), force=force,
                            keys_from=keys_from, rebuild_features=rebuild_features)
    counts = report["row_counts"]
    out.print(f"restored {name} in {report['seconds']} s: {counts.get('twins', 0)} twins, "
              f"{counts.get('predictions', 0)} predictions; audit log {report['audit']}", highlight=False)
    out.print(f"features: {report['features']}", highlight=False)


@backup_app.command("list")
@one_line_errors
def backup_list(where: Where) -> None:
    """Backups at WHERE: time, size, encrypted or not, last verify."""
    from platform_api.backup.destination import open_destination
    from platform_api.backup.verify import list_backups

    infos, partial = list_backups(open_destination(where))
    if not infos:
        out.print(f"no complete backups at {where}", highlight=False)
    for info in infos:
        out.print(f"{info.name}  {info.created_at}  {_size(info.size)}  {'encrypted' if info.encrypted else 'plain'}  "
                  f"verified: {info.verified}", highlight=False, soft_wrap=True)
    if partial:
        warn(f"{len(partial)} incomplete (not restorable): {', '.join(partial)}")
