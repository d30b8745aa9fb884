"""Plain Flower: `flwr run .` on the repository; and a run stopped by its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from federation.errors import LaunchError
from federation.processes import free_port, stop, wait_for_port
from federation.superlink import start_superlink
from tests.conftest import make_spec
from tests.integration.conftest import tracking_uri
from training.tabular.synth import synthesize_hospitals

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_flwr_run_dot_trains_the_packaged_quickstart(tmp_path: Path, isolated_home: Path) -> None:
    synthesize_hospitals(n_hospitals=3, n_patients=1500, seed=2, out_dir=isolated_home / "quickstart")
    port = free_port()
    link = start_superlink(port=port, log_file=tmp_path / "superlink.log", simulation=True)
    try:
        wait_for_port(port, 60, link)
        home = Path(os.environ["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        uri = tracking_uri(tmp_path)
        result = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", "local", "--stream",
             "--federation-config", "num-supernodes=3", "--run-config", f'tracking-uri="{uri}"'],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    finally:
        stop(link)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = MlflowClient(uri, registry_uri=uri).get_model_version("cardiac-risk", "1")
    assert version.tags["experiment"] == "quickstart-cardiac-risk"
    assert version.tags["hospitals"] == "hospital-01,hospital-02,hospital-03"


def test_a_run_past_its_timeout_is_stopped_and_marked_killed(
    hospital_files: list[Path], tmp_path: Path, launch: Callable[..., dict[str, Any]]
) -> None:
    events: list[dict[str, Any]] = []
    spec = make_spec(hospital_files, name="too-long", training={"rounds": 500})
    with pytest.raises(LaunchError, match="did not finish within 30 s"):
        launch(spec, on_event=events.append, timeout=30)
    run_id = next(e["run_id"] for e in events if e["event"] == "start")
    client = MlflowClient(tracking_uri(tmp_path), registry_uri=tracking_uri(tmp_path))
    assert client.get_run(run_id).info.status == "KILLED"
    assert not client.search_model_versions("name='test-cardiac-risk'")
