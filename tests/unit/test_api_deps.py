"""The API reaches its services through FastAPI dependencies: a test overrides them, and the tenant check is one dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from experiments.errors import VersionNotFound
from experiments.review_records import VersionInfo
from platform_api.auth import Principal, TenantPrincipal
from platform_api.deps import get_registry, identify_caller, require_tenant_roles
from platform_api.errors import Forbidden

_V1 = VersionInfo(name="sepsis", version="1", created=datetime(2026, 1, 2, 3, 4), review_status="pending",
                  validation_status="complete", auroc=0.81, calibration_slope=0.97, epsilon=2.0, aliases=("candidate",),
                  launched_by="key:abc/Dana", run_id="r1", experiment="e1", decided_by=None, decided_at=None, rationale=None)


class _FakeRegistry:
    """A registry with one model holding one version (never MLflow)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def versions(self, name: str) -> list[VersionInfo]:
        self.asked.append(name)
        return [_V1] if name == "sepsis" else []

    def show(self, name: str, version: str) -> VersionInfo:
        if (name, version) != ("sepsis", "1"):
            raise VersionNotFound(f"{name} has no version {version}")
        return _V1


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[TestClient]:
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    from platform_api.main import create_app
    from platform_api.settings import get_settings

    get_settings.cache_clear()
    app = create_app(migrate_on_start=False)
    app.dependency_overrides[identify_caller] = lambda: Principal(key_id="k1", role="data_scientist", tenant_id="t1", name="Dana")
    yield TestClient(app)  # no lifespan: nothing touches a database
    get_settings.cache_clear()


def test_the_registry_routes_use_an_overridden_registry(client: TestClient) -> None:
    fake = _FakeRegistry()
    client.app.dependency_overrides[get_registry] = lambda: fake
    listed = client.get("/v1/registry/models/sepsis/versions")
    assert listed.status_code == 200, listed.text
    assert [(v["version"], v["aliases"], v["auroc"]) for v in listed.json()] == [("1", ["candidate"], 0.81)]
    assert client.get("/v1/registry/models/other/versions").status_code == 404
    assert fake.asked == ["sepsis", "other"]
    assert client.get("/v1/registry/models/sepsis/versions/1").json()["launched_by"] == "key:abc/Dana"
    assert client.get("/v1/registry/models/sepsis/versions/7").status_code == 404


def test_patient_routes_admit_only_tenant_bound_keys_of_their_roles() -> None:
    check = require_tenant_roles("app", "admin")
    admitted = asyncio.run(check(Principal(key_id="k1", role="app", tenant_id="t1", name="ward")))
    assert isinstance(admitted, TenantPrincipal) and (admitted.tenant_id, admitted.key_id, admitted.name) == ("t1", "k1", "ward")
    with pytest.raises(Forbidden, match="belongs to no tenant"):
        asyncio.run(check(Principal(key_id="k2", role="admin", tenant_id=None)))
    with pytest.raises(Forbidden, match="role data_scientist may not"):
        asyncio.run(check(Principal(key_id="k3", role="data_scientist", tenant_id="t1")))
