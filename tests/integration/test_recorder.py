"""Group commit: many concurrent predictions, few transactions, an intact audit chain."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from platform_api.audit import verify
from platform_api.db import get_engine, migrate
from platform_api.models import Alert, AuditEvent, Prediction, Tenant, Twin
from platform_api.recorder import Recorder, Unit

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'platform.db'}"
    else:
        url = request.getfixturevalue("postgres_database").sqlalchemy_url
    migrate(url)
    engine = get_engine(url)  # SQLite with foreign keys on, as the API runs it
    with Session(engine) as session:
        session.add(Tenant(id="t1", name="t1"))
        session.add(Twin(id="twin-1", tenant_id="t1", patient_id="p1"))
        session.commit()
    yield engine
    engine.dispose()
    get_engine.cache_clear()


def _unit(twin_id: str = "twin-1", alert: bool = False) -> Unit:
    now = datetime.now(UTC).replace(tzinfo=None)
    prediction = {"id": str(uuid.uuid4()), "twin_id": twin_id, "tenant_id": "t1", "model_name": "m", "model_version": "1",
                  "risk": 0.5, "inputs": {"age": 60.0, "sex": None}, "created_at": now}
    alerts = [{"id": str(uuid.uuid4()), "prediction_id": prediction["id"], "twin_id": twin_id, "tenant_id": "t1",
               "priority": "high", "status": "open", "created_at": now, "acknowledged_at": None, "acknowledged_by": None}] if alert else []
    audit = {"actor": "k1", "role": "app", "tenant_id": "t1", "patient_id": "p1", "action": "prediction.create:x", "outcome": "ok"}
    return Unit(audit, [prediction], alerts)


def test_concurrent_units_commit_in_few_batches_with_an_intact_chain(engine: Engine) -> None:
    recorder = Recorder(engine)
    futures, lock = [], threading.Lock()

    def client(n: int) -> None:
        for i in range(n):
            future = recorder.submit(_unit(alert=i % 3 == 0))
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=client, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for future in futures:
        future.result(timeout=30)
    recorder.close()
    assert recorder.units == 400 and recorder.batches < 400  # group commit happened
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 400
        assert session.scalar(select(func.count()).select_from(Alert)) == 8 * 17
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 400
        check = verify(session)
    assert check.ok and check.events == 400


def test_a_bad_unit_fails_alone(engine: Engine) -> None:
    recorder = Recorder(engine)
    # queue the three units before the writer thread runs, so that they share one batch
    recorder._thread = threading.Thread(target=recorder._run, daemon=True)
    futures = [recorder.submit(u) for u in (_unit(), _unit(twin_id="no-such-twin"), _unit())]
    recorder._thread.start()
    futures[0].result(timeout=30)
    futures[2].result(timeout=30)
    with pytest.raises(IntegrityError):
        futures[1].result(timeout=30)
    recorder.close()
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 2
        assert verify(session).ok
