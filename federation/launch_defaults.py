"""Launch options with the embedded defaults: a run folder, the MLflow store and the ledgers under the data dir."""

from __future__ import annotations

import time
from pathlib import Path

from experiments.settings import get_settings
from federation.launcher import Engine, LaunchOptions

__all__ = ["launch_options"]


def launch_options(experiment: str, *, engine: Engine, tracking_uri: str | None = None, superlink: str | None = None,
                   client_cpus: float = 1.0, timeout: float = 3600.0, ledger_dir: Path | None = None,
                   launched_by: str | None = None) -> LaunchOptions:
    """Options to launch ``experiment`` now: its run folder ``<data dir>/runs/<local time>-<experiment>``,
    the tracking URI (default: the embedded store) and the ledgers (default: ``<data dir>/ledgers``)."""
    settings = get_settings()
    run_dir = settings.data_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{experiment}"
    return LaunchOptions(engine=engine, run_dir=run_dir, tracking_uri=tracking_uri or settings.resolved_tracking_uri(),
                         superlink=superlink, ledger_dir=ledger_dir or settings.data_dir / "ledgers",
                         client_cpus=client_cpus, timeout=timeout, launched_by=launched_by)
