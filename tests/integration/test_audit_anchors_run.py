"""A real DP run on Flower's simulation engine with audit-logging hospitals: the coordinator stores every hospital's
audit-chain head of every round in the run, and the exported anchors verify against the hospitals' real logs."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from typer.testing import CliRunner

from experiments.tracking import RunTracker, embedded_artifact_location
from federation import client_app
from federation.audit_heads import stored_heads
from federation.coordinator import Coordinator
from federation.grid import ResponsiveGrid
from federation.node_config import NodeConfig, save_node_config
from federation.progress import ProgressLog
from federation.secure_aggregation_mod import secure_aggregation_mod
from federation.site_audit import load_anchors, read_rows, verify_anchors, verify_log
from federation.site_policy import SitePolicy
from platform_api.cli import app
from tests.conftest import make_spec, spec_json

pytestmark = pytest.mark.integration
runner = CliRunner()
HOSPITALS = ("hospital-01", "hospital-02", "hospital-03")


def _client_app(spec_text: str, ledgers: str, logs: str) -> ClientApp:
    """BioVerse's own handlers, with what the launcher's run config and each hospital's node config carry in a
    deployment (the simulation engine gives a node only its partition id): the spec, and an audit log per hospital."""

    def site_config(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        hospital = HOSPITALS[int(ctxt.node_config["partition-id"])]
        # a copy: Flower refuses a run config changed in the node's stored context (its state is shared)
        return call_next(msg, dataclasses.replace(
            ctxt, run_config={**ctxt.run_config, "spec": spec_text, "ledger-dir": ledgers, "launched-by": "os:test"},
            node_config={**ctxt.node_config, "audit-log": f"{logs}/{hospital}.jsonl"}))

    app_ = ClientApp(mods=[site_config, secure_aggregation_mod])
    app_.query()(client_app.statistics)
    app_.train()(client_app.train)
    app_.evaluate()(client_app.evaluate)
    app_.query("validate")(client_app.validate)
    return app_


def _start_ray(attempts: int = 3) -> None:
    """Ray for the simulation engine, started here so that a start that times out on a loaded machine (Ray waits
    30 s for its raylet) is tried again; Flower's backend uses a Ray already started."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts:
                raise


@pytest.fixture(params=["plain", "secure-aggregation"])
def finished_run(request: pytest.FixtureRequest, hospital_files: list[Path], tmp_path: Path,
                 isolated_home: Path) -> dict[str, Any]:
    """A finished run, its training rounds plain or under SecAgg+ (heads kept by the SecAgg+ grid's recorder too)."""
    spec = make_spec(hospital_files, name="it-anchors", registered_model="it-anchors-risk",
                     strategy={"secure_aggregation": request.param == "secure-aggregation",
                               "round_timeout": 300})  # bounded should Ray fail to start on a loaded machine
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logs = tmp_path / "audit"
    logs.mkdir()
    seen: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        tracker = RunTracker(uri, embedded_artifact_location(uri))
        seen["summary"] = Coordinator(spec, tracker, ProgressLog(None)).run(ResponsiveGrid(grid))

    _start_ray()
    try:
        run_simulation(server_app=server, client_app=_client_app(spec_json(spec), str(tmp_path / "ledgers"), str(logs)),
                       num_supernodes=len(HOSPITALS), backend_config={"client_resources": {"num_cpus": 1}})
    finally:
        ray.shutdown()  # Flower's backend shuts it down too; a failed run may not have
    assert "summary" in seen, "the run did not finish"
    return {"run_id": seen["summary"]["run_id"], "uri": uri, "logs": logs, "rounds": spec.training.rounds,
            "root": tmp_path}


def test_a_run_stores_every_hospitals_heads_and_they_verify_against_the_real_logs(finished_run: dict[str, Any]) -> None:
    run_id, uri, logs = finished_run["run_id"], finished_run["uri"], finished_run["logs"]
    heads = stored_heads(uri, run_id)
    rounds = range(1, finished_run["rounds"] + 1)
    due = [("statistics", 0)] + [(stage, r) for r in rounds for stage in ("train", "evaluate")] + [("validate", None)]
    for hospital in HOSPITALS:
        mine = [h for h in heads if h["hospital"] == hospital]
        assert [(h["stage"], h["round"]) for h in mine] == due, hospital
        rows = read_rows(logs / f"{hospital}.jsonl")
        # every request of the run is a row, and the coordinator holds every row's hash, in order
        assert [r["hash"] for r in rows] == [h["head"] for h in mine]
        assert [r["message"] for r in rows] == [stage for stage, _ in due] and {r["run"] for r in rows} == {run_id}

    for hospital in HOSPITALS:  # the coordinator's export, as each hospital is given it
        out = finished_run["root"] / f"anchors-{hospital}.json"
        exported = runner.invoke(app, ["coordinator", "audit-heads", run_id, "--hospital", hospital,
                                       "--tracking-uri", uri, "--out", str(out)])
        assert exported.exit_code == 0, exported.output
        assert verify_log(logs / f"{hospital}.jsonl") == (len(due), [])
        assert verify_anchors(logs / f"{hospital}.jsonl", load_anchors(out, hospital)) is None

    node = finished_run["root"] / "hospital-02"  # the hospital's own command, on its real log
    node.mkdir()
    save_node_config(NodeConfig(
        hospital_id="hospital-02", coordinator="127.0.0.1:9092", ca_cert=node / "ca.pem", private_key=node / "node",
        public_key=node / "node.pub", data_path=node / "data.csv", ledger_path=node / "ledger.json",
        audit_log=logs / "hospital-02.jsonl", policy=SitePolicy(total_budget=10.0)), node / "node.toml")
    anchors = str(finished_run["root"] / "anchors-hospital-02.json")
    verified = runner.invoke(app, ["hospital", "audit", "verify", "--dir", str(node), "--anchors", anchors])
    assert verified.exit_code == 0 and f"{len(due)} anchors of run {run_id[:12]} found in order" in verified.output
    log = logs / "hospital-02.jsonl"  # the last row (its validation) removed, the head file moved back with it
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))
    last = json.loads(lines[-2])
    (log.parent / (log.name + ".head")).write_text(json.dumps({"rows": last["seq"], "hash": last["hash"]}))
    assert verify_log(log)[1] == []
    cut = runner.invoke(app, ["hospital", "audit", "verify", "--dir", str(node), "--anchors", anchors])
    assert cut.exit_code == 1 and f"anchor {len(due)} (validate of run {run_id[:12]}" in cut.output, cut.output
