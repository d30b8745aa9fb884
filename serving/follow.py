"""Following a registry alias: the version it points at stays loaded and is swapped when the alias moves."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic

from serving.errors import ModelNotReadyError, ServingError, UnapprovedVersion
from serving.loaded import M
from serving.model_source import RegistryModel

__all__ = ["AliasFollower"]

log = logging.getLogger(__name__)


class AliasFollower(Generic[M]):
    """Keeps the version ``models:/<name>@<alias>`` points at loaded, for the API and for Serve.

    A new version is loaded beside the old one and swapped in with one reference assignment,
    so callers holding the old one finish on it. A version without a valid approval (the
    alias moved by hand) is refused: the loaded version keeps serving (none loaded:
    :class:`UnapprovedVersion`), and ``on_refused(version, reason)`` runs once per refused
    version and approval. A version that fails to load is not downloaded again until the
    alias or its approval changes; the loaded version keeps serving.

    Args:
        source: The registry alias to follow.
        kind: The kind served (``LoadedModel`` or ``LoadedVisionModel``).
        poll_seconds: How often the alias is checked.
        on_refused: Called with (version, reason) once per refused version (the API audits it).
        on_loaded: Called with each newly loaded version.
        background: Load now (raising if nothing can be served) and poll in a thread (Serve);
            False: load on the first :meth:`current` and re-check there at most every
            ``poll_seconds`` (the API).
    """

    def __init__(self, source: RegistryModel, kind: type[M], *, poll_seconds: float = 5.0,
                 on_refused: Callable[[str, str], None] | None = None,
                 on_loaded: Callable[[M], None] | None = None, background: bool = True) -> None:
        self.source = source
        self.kind: type[M] = kind
        self.poll_seconds = poll_seconds
        self.on_refused = on_refused
        self.on_loaded: Callable[[M], None] | None = on_loaded
        self.refused: dict[tuple[str, str], str] = {}  # (version, approval tag) -> why serving refused it
        self._failed: tuple[str, str] | None = None  # the marker whose load failed last
        self._model: M | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if background:
            self.refresh()
            threading.Thread(target=self._follow, name="follow-alias", daemon=True).start()

    @property
    def model(self) -> M:
        """The version being served now.

        Raises:
            ModelNotReadyError: nothing loaded yet.
        """
        model = self._model
        if model is None:
            raise ModelNotReadyError(f"{self.source.name}@{self.source.alias}: no version loaded yet")
        return model

    def fresh(self) -> M | None:
        """The model if it was checked against the registry within ``poll_seconds`` (no I/O)."""
        model = self._model
        if model is not None and time.monotonic() - self._checked < self.poll_seconds:
            return model
        return None

    def current(self) -> M:
        """The model the alias points at, re-checked if older than ``poll_seconds`` (may block on the registry).

        Raises:
            ModelNotReadyError: no version under the alias, or none approved and loaded.
        """
        return self.fresh() or self.refresh(only_if_stale=True)

    def refresh(self, *, only_if_stale: bool = False) -> M:
        """Check the alias now and swap in the version it points at if that is new.

        Raises:
            ModelNotReadyError: no version under the alias, or nothing loaded and this one cannot be.
        """
        with self._lock:
            model = self._model
            if only_if_stale and model is not None and time.monotonic() - self._checked < self.poll_seconds:
                return model
            marker = self.source.current_marker()
            if model is None or (marker[0] != model.version and marker not in self.refused and marker != self._failed):
                model = self._load(marker, model)
            self._checked = time.monotonic()
            return model

    def _load(self, marker: tuple[str, str], serving: M | None) -> M:
        try:
            model = self.source.load(marker[0], self.kind)
        except UnapprovedVersion as err:
            self._refuse(marker, str(err), serving)
            if serving is None:
                raise
            return serving
        except ServingError:
            self._failed = marker
            raise
        self._model = model  # the swap: one reference assignment
        self._failed = None
        if self.on_loaded is not None:
            self.on_loaded(model)
        return model

    def _refuse(self, marker: tuple[str, str], reason: str, serving: M | None) -> None:
        if marker in self.refused:
            return
        self.refused[marker] = reason
        log.error("serving keeps %s: %s", serving.version if serving else "no version", reason)
        if self.on_refused is not None:
            try:
                self.on_refused(marker[0], reason)
            except Exception:  # noqa: BLE001 - the refusal stands even if reporting it failed
                log.exception("could not report the refused version %s", marker[0])

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep serving the current version
                log.exception("could not follow %s@%s", self.source.name, self.source.alias)

    def stop(self) -> None:
        """Stop following (the current version stays loaded)."""
        self._stop.set()
