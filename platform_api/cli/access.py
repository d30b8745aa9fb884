"""Who runs a command and what it reaches: the platform database, API-key callers, the model registry."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from platform_api.cli.errors import CliInputError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from experiments.registry import ModelRegistry
    from platform_api.auth import Principal

__all__ = ["KeyOpt", "ModelOpt", "UriOpt", "api_session", "launched_by", "open_registry", "principal"]

ModelOpt = Annotated[str | None, typer.Option("--model", help="Registered model (default: BIOVERSE_API_MODEL_NAME, cardiac-risk).")]
UriOpt = Annotated[str | None, typer.Option(help="MLflow URI (default: the API's, else the embedded store).")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="BIOVERSE_API_KEY", show_default=False,
                                             help="Your API key (bv_...; default: BIOVERSE_API_KEY): its person decides.")]


def api_session() -> Session:
    """A session on the platform database, migrated first."""
    from platform_api.db import migrate, session_factory
    from platform_api.settings import get_settings as api_settings

    migrate(api_settings().resolved_database_url())
    return session_factory()()


def open_registry(model: str | None, tracking_uri: str | None) -> tuple[ModelRegistry, str]:
    """The model registry and the model's name (defaults: the API's settings)."""
    from experiments.registry import ModelRegistry
    from platform_api.settings import get_settings as api_settings

    settings = api_settings()
    return ModelRegistry(tracking_uri or settings.resolved_tracking_uri()), model or settings.model_name


def principal(api_key: str | None, *roles: str) -> Principal:
    """The caller an API key belongs to, checked against the platform database as the API does."""
    from platform_api.auth import authenticate
    from platform_api.errors import NotAuthenticated

    if not (api_key or "").strip():
        raise CliInputError("an API key is required: set BIOVERSE_API_KEY or pass --api-key "
                            "(an admin creates one: bioverse api key create --role clinical_validator --name 'Dr Quinn')")
    try:
        with api_session() as session:
            who = authenticate(session, (api_key or "").strip())
    except NotAuthenticated as e:
        raise CliInputError(f"API key refused: {e}") from None
    if roles and who.role not in roles:
        raise CliInputError(f"role {who.role} may not do this (allowed: {', '.join(roles)})")
    return who


def launched_by() -> str | None:
    """``launched_by`` of a launch: the person of ``BIOVERSE_API_KEY`` (checked against the platform
    database) as ``key:<id>/<person>``; None without the variable (the launcher records ``os:<login>``)."""
    key = os.environ.get("BIOVERSE_API_KEY", "").strip()
    return principal(key).identity.tag if key else None
