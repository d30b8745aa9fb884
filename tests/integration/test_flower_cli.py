"""Plain Flower: `flwr run .` on the repository; and a run stopped by its timeout."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.tracking import MlflowClient

from federation.errors import LaunchError
from federation.processes import free_port
from tests.conftest import make_spec
from tests.integration.conftest import tracking_uri

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _readme_recipe() -> str:
    """The bash block of the README's "Plain Flower" section, as a user copies it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Plain Flower"):]
    found = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert found, "the README's Plain Flower section has no bash block"
    return found.group(1)


def _stop_local_superlink(port: int) -> None:
    """The local SuperLink `flwr run` left running (detached) on ``port``, stopped by its id."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("flower-superlink" in part for part in cmdline) and str(port) in cmdline:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
                proc.wait(15)


def test_the_readme_plain_flower_recipe_trains_the_packaged_quickstart(tmp_path: Path, isolated_home: Path) -> None:
    fleet, control = free_port(), free_port()  # never Flower's own ports: other runs share this machine
    env = {**os.environ, "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(fleet), "FLWR_LOCAL_CONTROL_API_PORT": str(control),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the recipe sets it
    try:
        for _ in range(3):  # as the README says: on a busy machine the SuperLink may need more than flwr's 15 s
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", _readme_recipe()], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=600)
            if "Failed to start local SuperLink" not in result.stdout + result.stderr:
                break
    finally:
        _stop_local_superlink(fleet)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Successfully started run" in output
    uri = f"sqlite:///{isolated_home / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("cardiac-risk", "1")
    assert version.tags["experiment"] == "quickstart-cardiac-risk"
    assert version.tags["hospitals"] == "hospital-01,hospital-02,hospital-03"  # num-supernodes from the spec: all 3
    assert f"FINISHED: model cardiac-risk version 1 registered in {uri}" in output  # --stream shows where it went
    assert "quickstart-cardiac-risk" in result.stdout and "FINISHED" in result.stdout  # `bioverse experiment runs`


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
