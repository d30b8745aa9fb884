"""No input makes the platform API answer 500: schemathesis, driven by the API's own OpenAPI."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from platform_api.auth import create_key
from platform_api.db import database_url, migrate, session_factory
from platform_api.main import create_app

pytestmark = pytest.mark.integration

# Its own SQLite database, through dependency overrides: no environment is changed.
URL = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bioverse-fuzz-')) / 'platform.db'}"
migrate(URL)
with session_factory(URL)() as _session:
    TOKEN = create_key(_session, role="admin", tenant_id="fuzz")


async def _fuzz_database() -> str:
    return URL


APP = create_app(migrate_on_start=False)
APP.dependency_overrides[database_url] = _fuzz_database
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])
