"""Alembic environment: the platform's models, the URL from settings (or the caller)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from platform_api.models import Base
from platform_api.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url()
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
