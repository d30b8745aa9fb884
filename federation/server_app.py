"""The coordinator's Flower ServerApp: runs an experiment spec over the grid."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from experiments.settings import get_settings
from experiments.tracking import RunTracker, embedded_artifact_location
from federation.coordinator import Coordinator
from federation.grid import ResponsiveGrid
from federation.polling import fast_object_pulls
from federation.progress import ProgressLog
from federation.site import spec_from_run_config

__all__ = ["app"]

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config and hand a typed spec, tracker and progress log inward."""
    logging.basicConfig(level=logging.INFO)
    # one INFO line per HTTP request to the SuperLink, each shipped back to it by Flower's log uploader
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not fast_object_pulls():
        log.warning("flwr's object pulls are not the ones expected (flwr 1.42): keeping their 1 s retry wait")
    config = dict(context.run_config)
    progress = ProgressLog(str(config.get("progress-file", "") or "") or None)
    try:
        spec = spec_from_run_config(config)
    except Exception as err:
        progress.emit("error", message=str(err))
        raise
    settings = get_settings()
    uri = str(config.get("tracking-uri", "") or "") or settings.resolved_tracking_uri()
    launched_by = str(config.get("launched-by", "") or "") or None  # else the OS user running the ServerApp
    resume = str(config.get("resume-run", "") or "") or None  # `bioverse experiment resume RUN_ID`
    summary = Coordinator(spec, RunTracker(uri, embedded_artifact_location(uri), launched_by=launched_by), progress,
                          resume_run=resume).run(ResponsiveGrid(grid))
    log.info("run %s FINISHED: model %s version %s registered in %s (see `bioverse experiment runs`)",
             summary["run_id"], spec.model_name, summary.get("model_version"), uri)
