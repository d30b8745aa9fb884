"""Group commit of predictions, alerts and their audit events by one recorder thread per process (docs/api.md)."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from platform_api.audit import CHAIN_LOCK, event_mac, lock_chain
from platform_api.audit_checkpoints import audit_key, note_appended
from platform_api.models import Alert, AuditEvent, ImagePrediction, Prediction
from platform_api.settings import get_settings

__all__ = ["Recorder", "Unit"]

log = logging.getLogger(__name__)


@dataclass
class Unit:
    """One request's rows and its audit event (actor, role, tenant_id, patient_id, action, outcome)."""

    audit: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    image_predictions: list[dict[str, Any]] = field(default_factory=list)
    future: Future[None] = field(default_factory=Future)


class Recorder:
    """The process's writer of prediction rows (see module doc).

    Args:
        engine: The platform database.
        max_batch: Most units per transaction.
    """

    def __init__(self, engine: Engine, max_batch: int = 1024) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        self.units = 0

    def submit(self, unit: Unit) -> Future[None]:
        """Queue a unit; its future resolves once committed (or carries the error)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="bioverse-recorder", daemon=True)
                    self._thread.start()
        unit.audit.setdefault("at", datetime.now(UTC).replace(tzinfo=None))
        self._queue.put(unit)
        return unit.future

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            self._thread = None
            note_appended(self.engine, 0, force=True)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=get_settings().audit_checkpoint_seconds)
            except queue.Empty:  # idle: anchor what was appended since the last checkpoint
                note_appended(self.engine, 0)
                continue
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stop = True
                    break
                batch.append(unit)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[Unit]) -> None:
        try:
            self._commit_retrying(batch)
        except Exception as err:  # noqa: BLE001 - isolate the failing unit
            if len(batch) == 1:
                self._fail(batch[0], err)
                return
            log.warning("batch of %d failed (%s); writing its units one by one", len(batch), err)
            for unit in batch:
                self._write([unit])
            return
        self.batches += 1
        self.units += len(batch)
        note_appended(self.engine, len(batch))
        for unit in batch:
            unit.future.set_result(None)

    def _fail(self, unit: Unit, err: Exception) -> None:
        """A unit whose rows the database refused: audit the failure alone, then answer the error."""
        if unit.predictions or unit.alerts or unit.image_predictions:
            try:
                self._commit_retrying([Unit(dict(unit.audit, outcome=type(err).__name__.lower()))])
                note_appended(self.engine, 1)
            except Exception as audit_err:  # noqa: BLE001 - the caller gets the first error
                log.error("audit event of a failed unit not written: %s", audit_err)
        unit.future.set_exception(err)

    def _commit_retrying(self, batch: list[Unit], attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                self._commit(batch)
                return
            except IntegrityError as err:
                # another writer took the head first (it skipped the lock): chain onto the new head
                if "prev_hash" not in str(err.orig) or attempt == attempts - 1:
                    raise
                log.warning("audit head taken by another writer; retrying on the new head")

    def _commit(self, batch: list[Unit]) -> None:
        predictions = [row for unit in batch for row in unit.predictions]
        alerts = [row for unit in batch for row in unit.alerts]
        images = [row for unit in batch for row in unit.image_predictions]
        key = audit_key()
        with CHAIN_LOCK, self.engine.begin() as connection:
            if predictions:
                connection.execute(insert(Prediction.__table__), predictions)
            if images:
                connection.execute(insert(ImagePrediction.__table__), images)
            if alerts:
                connection.execute(insert(Alert.__table__), alerts)
            prev = lock_chain(connection)
            events = []
            for unit in batch:
                event = dict(unit.audit, prev_hash=prev)
                event["hash"] = prev = event_mac(key, prev, event)
                events.append(event)
            connection.execute(insert(AuditEvent.__table__), events)
