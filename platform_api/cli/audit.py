"""``bioverse audit``: verify the audit trail's MAC chain, and anchor it with signed checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.access import api_session
from platform_api.cli.errors import CliInputError, PlatformStoreError
from platform_api.cli.output import err, one_line_errors, out

__all__ = ["audit_app"]

audit_app = typer.Typer(help="The audit trail of access to patient data.", no_args_is_help=True)


@contextlib.contextmanager
def _reading_the_log() -> Iterator[None]:
    """A database that cannot be read (down, or its audit table dropped) becomes one line, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as e:
        raise PlatformStoreError.caused_by("cannot read the audit log", e) from None
    except OSError as e:  # stop-gap: platform_api.audit_checkpoints refuses an unreadable checkpoints file with a bare OSError
        raise CliInputError(str(e)) from e


@audit_app.command("verify")
@one_line_errors
def audit_verify(
    checkpoints: Annotated[Path | None, typer.Option(help="Checkpoints file (default: the API's audit_checkpoints).")] = None,
    max_lines: Annotated[int, typer.Option(help="Print at most this many breaks (0: all).", min=0)] = 200,
    archive: Annotated[str | None, typer.Option(help="Archive folder or s3://bucket/prefix (default: the configured one).")] = None,
) -> None:
    """Check the archived segments and the live MAC chain against the signed checkpoints; print every break, exit 1 if any."""
    from platform_api.audit_archive_store import open_store
    from platform_api.audit_archive_verify import verify_all

    with _reading_the_log(), api_session() as session:
        check = verify_all(session, open_store(archive), checkpoints=checkpoints)
    anchor = (f"{check.checkpoints} checkpoint{'s' if check.checkpoints > 1 else ''}" if check.checkpoints
              else "no checkpoint yet: the tail is not anchored")
    legacy = f", {min(check.legacy_until, check.last_id)} legacy (unkeyed)" if check.legacy_until else ""
    if check.segments:
        legacy += f" ({check.archived} of them in {check.segments} archive segment{'s' if check.segments > 1 else ''})"
    if check.ok:
        out.print(f"audit log intact: {check.events} events{legacy}, {anchor}", highlight=False)
        return
    err.print(f"[bold red]error:[/] audit log BROKEN: {len(check.breaks)} breaks in {check.events} events{legacy}, {anchor}",
              highlight=False)
    shown = check.breaks if max_lines == 0 else check.breaks[:max_lines]
    for item in shown:
        where = ("checkpoints" if item.event_id is None else "archive" if item.reason.startswith("archive segment")
                 else f"event {item.event_id}")
        err.print(f"  {where}: {item.reason}", highlight=False, markup=False)
    if len(shown) < len(check.breaks):
        err.print(f"  ... {len(check.breaks) - len(shown)} more (--max-lines 0 prints all)", highlight=False)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
@one_line_errors
def audit_checkpoint(
    checkpoints: Annotated[Path | None, typer.Option(help="Checkpoints file (default: the API's audit_checkpoints).")] = None,
) -> None:
    """Append a signed checkpoint of the chain's head to the checkpoints file (run it from cron, too)."""
    from platform_api.audit_checkpoints import checkpoint_path, write_checkpoint

    with _reading_the_log(), api_session() as session:
        cp = write_checkpoint(session.get_bind(), path=checkpoints)
    if cp is None:
        out.print("audit log empty: nothing to checkpoint", highlight=False)
        return
    out.print(f"checkpoint: {cp.events} events, head {cp.head[:16]}... (event {cp.last_id}) -> "
              f"{checkpoints or checkpoint_path()}", highlight=False)


@audit_app.command("archive")
@one_line_errors
def audit_archive(
    older_than: Annotated[float | None, typer.Option(help="Archive events older than this many days "
                                                          "(default: BIOVERSE_API_AUDIT_RETENTION_DAYS, 2557).", min=0)] = None,
    before: Annotated[datetime | None, typer.Option(help="Archive events before this UTC date or time instead.")] = None,
    to: Annotated[str | None, typer.Option(help="Archive folder or s3://bucket/prefix (default: <data dir>/audit/archive).")] = None,
    segment_events: Annotated[int | None, typer.Option(help="At most this many events per segment.", min=1)] = None,
) -> None:
    """Move events older than the retention age to signed, checksummed segments, then out of the live table."""
    from platform_api.audit_archive import Archiver, cutoff
    from platform_api.audit_archive_store import open_store

    if older_than is not None and before is not None:
        raise CliInputError("--older-than and --before: give one of them")
    store = open_store(to)
    with _reading_the_log(), api_session() as session:
        run = Archiver(session.get_bind(), store, segment_events=segment_events).run(
            cutoff(older_than_days=older_than, before=before))
    if not run.segments:
        out.print(f"nothing to archive: no event before {cutoff(older_than_days=older_than, before=before):%Y-%m-%d %H:%M} "
                  "but the chain's head", highlight=False)
        return
    first, last = run.segments[0].manifest, run.segments[-1].manifest
    out.print(f"archived {run.events} events (ids {first['first_id']}-{last['last_id']}) in {len(run.segments)} "
              f"segment{'s' if len(run.segments) > 1 else ''}, {run.bytes:,} bytes, {run.seconds:.1f} s -> {store}",
              highlight=False)
