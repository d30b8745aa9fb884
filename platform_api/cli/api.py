"""``bioverse api``: serve the platform API; ``bioverse api key``: create and revoke API keys."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.access import api_session
from platform_api.cli.errors import CliInputError, PlatformStoreError
from platform_api.cli.output import exec_server, one_line_errors, out

__all__ = ["api_app"]

api_app = typer.Typer(help="The platform API: `bioverse api` serves it; keys manage access.", invoke_without_command=True)
key_app = typer.Typer(help="API keys (the token is shown once; only its hash is stored).", no_args_is_help=True)
api_app.add_typer(key_app, name="key")


@api_app.callback()
@one_line_errors
def api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Start the platform API (migrating its database first)."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from platform_api.settings import get_settings as api_settings

    try:  # check the settings before starting: a bad one is one line, not a traceback
        api_settings()
    except ValidationError as e:  # stop-gap: platform_api.settings has no domain error for a bad setting yet
        raise CliInputError(str(e)) from e
    out.print(f"BioVerse platform API on http://{host}:{port} (docs at /docs)", highlight=False)
    # the server process keeps PyTorch out (platform_api.asgi): about 230 MB less resident memory
    exec_server([str(Path(sys.executable).parent / "uvicorn"), "platform_api.asgi:app", "--host", host, "--port", str(port),
                 "--log-level", "warning", "--no-access-log"])


@contextlib.contextmanager
def _writing_keys() -> Iterator[None]:
    """A database that refuses the key change or its audit event (down, audit log read-only) becomes one line."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as e:
        raise PlatformStoreError.caused_by("cannot write the key and its audit event", e) from e


@key_app.command("create")
@one_line_errors
def key_create(
    role: Annotated[str, typer.Option(help="admin, data_scientist, hospital, app or clinical_validator.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant (required for every role but admin and clinical_validator; "
                                                    "a validator without one reviews platform-wide models).")] = None,
    name: Annotated[str, typer.Option(help="Who uses the key: the person's name for data scientists and validators "
                                           "(the review gate compares people by it), else the app or site.")] = "",
) -> None:
    """Create an API key and print its token (once)."""
    from platform_api.key_admin import create_key_audited

    if role in ("clinical_validator", "data_scientist") and not name.strip():
        raise CliInputError(f"a {role} key needs --name: the person it belongs to (reviews are independent of launches by person)")
    with _writing_keys(), api_session() as session:
        token = create_key_audited(session, role=role, tenant_id=tenant, name=name)
    out.print(token, highlight=False)


@key_app.command("revoke")
@one_line_errors
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after bv_).")]) -> None:
    """Revoke an API key."""
    from platform_api.key_admin import revoke_key_audited

    with _writing_keys(), api_session() as session:
        if not revoke_key_audited(session, key_id):
            raise CliInputError(f"no active key {key_id}")
    out.print(f"revoked {key_id}", highlight=False)
