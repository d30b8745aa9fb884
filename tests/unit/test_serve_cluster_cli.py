"""``bioverse serve deploy|status`` pieces: Ray's Serve details read into views, one-line failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from federation.processes import free_port
from platform_api.cli import app
from serving.cluster import ServeCluster, deployment_views, short_message

runner = CliRunner()

#: The shape of ``GET /api/serve/applications/`` (ray 2.55 ServeInstanceDetails), trimmed.
DETAILS: dict[str, Any] = {
    "proxy_location": "HeadOnly",
    "applications": {
        "risk": {
            "name": "risk", "route_prefix": "/risk", "status": "RUNNING", "message": "", "last_deployed_time_s": 1.0,
            "deployments": {
                "RiskPredictor": {
                    "name": "RiskPredictor", "status": "UPSCALING", "message": "Upscaling from 2 to 3 replicas.",
                    "target_num_replicas": 3,
                    "deployment_config": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 4,
                                                                 "target_ongoing_requests": 2.0}},
                    "replicas": [
                        {"replica_id": "a1", "state": "RUNNING", "node_ip": "10.0.0.2", "node_id": "n2" * 20, "pid": 7},
                        {"replica_id": "b2", "state": "RUNNING", "node_ip": "10.0.0.3", "node_id": "n3" * 20},
                        {"replica_id": "c3", "state": "STARTING", "node_ip": "10.0.0.3", "node_id": "n3" * 20},
                    ],
                },
            },
        },
    },
}


def test_deployment_views_name_each_replicas_node_and_the_autoscaling_bounds() -> None:
    (view,) = deployment_views(DETAILS)
    assert (view.application, view.name, view.status, view.target_replicas) == ("risk", "RiskPredictor", "UPSCALING", 3)
    assert (view.min_replicas, view.max_replicas, view.target_ongoing_requests) == (2, 4, 2.0)
    assert [(r.replica_id, r.state, r.node_ip) for r in view.replicas] == [
        ("a1", "RUNNING", "10.0.0.2"), ("b2", "RUNNING", "10.0.0.3"), ("c3", "STARTING", "10.0.0.3")]
    assert view.running_nodes == {"n2" * 20, "n3" * 20}
    assert json.loads(json.dumps(view.as_dict()))["replicas"][0]["pid"] == 7
    assert deployment_views({"applications": {}}) == []


def test_a_relayed_traceback_becomes_the_line_that_names_the_error() -> None:
    message = ("Deploying application risk failed: Traceback (most recent call last):\n  File \"x.py\", line 1\n"
               "    import nope\nModuleNotFoundError: No module named 'nope'\n")
    assert short_message(message) == ("Deploying application risk failed: ModuleNotFoundError: No module named 'nope'")
    assert short_message("x" * 500).endswith("...") and len(short_message("x" * 500)) == 240
    assert ServeCluster("10.0.0.1:8265").address == "http://10.0.0.1:8265"


def test_status_of_an_unreachable_cluster_is_one_line() -> None:
    result = runner.invoke(app, ["serve", "status", "--address", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no Ray dashboard at http://127.0.0.1:") and result.output.count("\n") == 1


def test_deploy_checks_the_model_then_fails_in_one_line_without_a_cluster(isolated_home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import local_config
    from serving.errors import ModelNotReadyError

    def not_ready(uri: str, model: str, alias: str) -> str:
        raise ModelNotReadyError(f"no version of model {model!r} has the alias {alias!r}")

    monkeypatch.setattr(local_config, "servable_version", not_ready)
    refused = runner.invoke(app, ["serve", "deploy", "--address", "http://127.0.0.1:1", "--model", "m",
                                  "--tracking-uri", "sqlite:///x.db", "--vision-model", "none"])
    assert refused.exit_code == 1 and refused.output == "error: no version of model 'm' has the alias 'production'\n"

    monkeypatch.setattr(local_config, "servable_version", lambda uri, model, alias: "3")
    port = free_port()
    unreachable = runner.invoke(app, ["serve", "deploy", "--address", f"http://127.0.0.1:{port}", "--model", "m",
                                      "--tracking-uri", "sqlite:///x.db", "--vision-model", "none"])
    assert unreachable.exit_code == 1 and f"error: no Ray dashboard at http://127.0.0.1:{port}" in unreachable.output
    assert unreachable.output.count("\n") == 1


def test_the_cluster_config_listens_on_every_address_and_keeps_the_packaged_autoscaling() -> None:
    from serving.local_config import PACKAGED_CONFIG, local_serve_config

    config = local_serve_config(PACKAGED_CONFIG, port=8000, tracking_uri="http://mlflow:5000", alias="production",
                                risk_model="r", vision_model=None, http_host="0.0.0.0")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    (risk,) = config["applications"]
    scaling = risk["deployments"][0]["autoscaling_config"]
    packaged = yaml.safe_load(PACKAGED_CONFIG.read_text())["applications"][0]["deployments"][0]["autoscaling_config"]
    assert scaling == packaged and scaling["min_replicas"] >= 2 and scaling["max_replicas"] > scaling["min_replicas"]


def test_a_config_file_that_is_not_a_serve_config_is_one_line(isolated_home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import local_config

    monkeypatch.setattr(local_config, "servable_version", lambda uri, model, alias: "3")
    for name, text, said in (("bad.yaml", "applications: [", "not YAML"), ("list.yaml", "- a\n- b\n", "not a Serve config"),
                             ("empty.yaml", "applications:\n  - route_prefix: /x\n", "not a Serve config")):
        (tmp_path / name).write_text(text)
        for command in ("up", "deploy"):
            result = runner.invoke(app, ["serve", command, "--config", str(tmp_path / name), "--tracking-uri",
                                         "sqlite:///x.db", "--vision-model", "none"])
            assert result.exit_code == 1, result.output
            assert result.output.startswith(f"error: {tmp_path / name}: {said}") and result.output.count("\n") == 1


def test_the_risk_app_hands_its_replicas_where_to_count_rollout_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.app import build_risk_app

    args = {"tracking_uri": "sqlite:///registry.db", "model_name": "m"}
    monkeypatch.delenv("BIOVERSE_ROLLOUT_STATS_URL", raising=False)
    assert build_risk_app(args)._bound_deployment.init_args[-1] is None  # not counted
    monkeypatch.setenv("BIOVERSE_ROLLOUT_STATS_URL", "postgresql://db/platform")  # where `serve deploy` runs
    assert build_risk_app(args)._bound_deployment.init_args[-1] == "postgresql://db/platform"
    explicit = build_risk_app({**args, "rollout_stats_url": "sqlite:///platform.db"})
    assert explicit._bound_deployment.init_args[-1] == "sqlite:///platform.db"
