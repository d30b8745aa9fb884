"""Ray Serve on a three-node Ray cluster (head + two workers, each its own network host):
``bioverse serve deploy|status``, replicas spread over nodes, autoscaling up and back, a worker lost under load."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import register_risk_models
from tests.integration.netns import network, skip_reason
from tests.integration.raycluster import RayCluster, short_temp_root, start_ray_cluster, wait_until

# The module fixture (model, three Ray nodes, deploy) took 5 min at load 20: it counts against the first test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
MODEL = "cluster-risk"
WORKERS = ("worker1", "worker2")
MIN_REPLICAS = 2
MAX_REPLICAS = 4

#: The test's Serve config: the risk application only, autoscaling fast enough to watch
#: (target 2 ongoing requests per replica, short delays) and replicas small (0.5 CPU).
TEST_CONFIG = {
    "proxy_location": "HeadOnly",
    "http_options": {"host": "0.0.0.0", "port": 8000},
    "applications": [{
        "name": "risk", "route_prefix": "/risk", "import_path": "serving.app:build_risk_app",
        "args": {"poll_seconds": 30, "num_cpus": 0.5},
        "deployments": [{"name": "RiskPredictor", "max_ongoing_requests": 32, "autoscaling_config": {
            "min_replicas": MIN_REPLICAS, "max_replicas": MAX_REPLICAS, "target_ongoing_requests": 2,
            "upscale_delay_s": 2, "downscale_delay_s": 6, "metrics_interval_s": 1, "look_back_period_s": 4}}],
    }],
}


def running(replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in replicas if r["state"] == "RUNNING"]


@pytest.fixture(scope="module")
def cluster(hospitals_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayCluster, Path]]:
    """A Ray head (dashboard, Serve controller and proxy, no CPUs), two 2-CPU workers and a
    client host; a registered, approved risk model in a store every host sees (one filesystem)."""
    reason = skip_reason()
    if reason and os.environ.get("BIOVERSE_REQUIRE_NETNS"):
        pytest.fail(f"{reason} (BIOVERSE_REQUIRE_NETNS is set)")
    if reason:
        pytest.skip(f"{reason}; set BIOVERSE_REQUIRE_NETNS=1 to fail instead")
    work = tmp_path_factory.mktemp("serve-cluster")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rows = register_risk_models(uri, MODEL, sorted(hospitals_dir.glob("hospital-*.csv")), versions=1)
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "serve.yaml").write_text(yaml.safe_dump(TEST_CONFIG))
    temp = short_temp_root()
    try:
        with network(["head", *WORKERS, "client"]) as net:
            started = time.monotonic()
            ray = start_ray_cluster(net, temp, workers=WORKERS)
            print(f"three Ray nodes up in {time.monotonic() - started:.0f} s")
            deployed = ray.cli("serve", "deploy", "--address", ray.dashboard, "--config", str(work / "serve.yaml"),
                               "--model", MODEL, "--tracking-uri", uri, "--vision-model", "none", "--timeout", "400",
                               timeout=480)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            assert f"Deployed {MODEL}@production (version 1)" in deployed.stdout, deployed.stdout
            print(f"deployed in {time.monotonic() - started:.0f} s")
            yield ray, work
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_deploy_spreads_replicas_over_the_workers(cluster: tuple[RayCluster, Path]) -> None:
    ray, work = cluster
    replicas = running(ray.replicas())
    assert len(replicas) >= MIN_REPLICAS, replicas
    workers = {ray.address_of(w) for w in WORKERS}
    nodes = {r["node_ip"] for r in replicas}
    assert nodes == workers, f"replicas on {nodes}, workers are {workers}"  # the head has no CPUs
    shown = ray.cli("serve", "status", "--address", ray.dashboard)
    assert shown.returncode == 0 and "RiskPredictor HEALTHY" in shown.stdout, shown.stdout
    assert f"min {MIN_REPLICAS}, max {MAX_REPLICAS}, target_ongoing_requests 2" in shown.stdout, shown.stdout
    rows = json.loads((work / "rows.json").read_text())
    status, body = ray.post("/risk", {"instances": rows[:3]})
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert [p["model_version"] for p in predictions] == ["1"] * 3 and all(0 < p["risk"] < 1 for p in predictions)


def test_deploy_and_status_fail_in_one_line(cluster: tuple[RayCluster, Path]) -> None:
    ray, work = cluster
    unreachable = ray.cli("serve", "status", "--address", f"http://{ray.address_of('worker1')}:9", timeout=120)
    assert unreachable.returncode == 1 and unreachable.stdout.strip().count("\n") == 0, unreachable.stdout
    assert "no Ray dashboard at" in unreachable.stdout + unreachable.stderr
    (work / "invalid.yaml").write_text(yaml.safe_dump(dict(TEST_CONFIG, proxy_location="Nowhere")))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    refused = ray.cli("serve", "deploy", "--address", ray.dashboard, "--config", str(work / "invalid.yaml"), "--model",
                      MODEL, "--tracking-uri", uri, "--vision-model", "none", timeout=300)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "error: the cluster refused the Serve config: " in text, text
    assert "proxy_location" in text and "Traceback" not in text, text
    risk = TEST_CONFIG["applications"][0]
    bad = dict(TEST_CONFIG, applications=[risk, dict(risk, name="broken", route_prefix="/broken",
                                                     import_path="serving.app:no_such_builder")])
    (work / "broken.yaml").write_text(yaml.safe_dump(bad))
    failed = ray.cli("serve", "deploy", "--address", ray.dashboard, "--config", str(work / "broken.yaml"), "--model",
                     MODEL, "--tracking-uri", uri, "--vision-model", "none", "--timeout", "300", timeout=400)
    text = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "application 'broken' DEPLOY_FAILED" in text, text
    assert "Traceback" not in text
    # Declarative: the config without 'broken' removes it; 'risk' kept serving all along.
    restored = ray.cli("serve", "deploy", "--address", ray.dashboard, "--config", str(work / "serve.yaml"), "--model",
                       MODEL, "--tracking-uri", uri, "--vision-model", "none", timeout=400)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert [d["application"] for d in ray.status()] == ["risk"]


def test_replicas_scale_up_under_load_and_back_down_after(cluster: tuple[RayCluster, Path]) -> None:
    ray, work = cluster
    wait_until(lambda: len(running(ray.replicas())) == MIN_REPLICAS, 120, "replicas at min before the load")
    load = ray.load(work / "rows.json", work / "scale.json", clients=16, seconds=90)
    try:
        peak = wait_until(lambda: (n := len(running(ray.replicas()))) > MIN_REPLICAS and n, 90,
                          "more replicas than min under load", poll=2)
        print(f"replicas under load: {peak} (min {MIN_REPLICAS}, max {MAX_REPLICAS})")
    finally:
        load.terminate()
        assert load.wait(90) == 0
    wait_until(lambda: len(running(ray.replicas())) == MIN_REPLICAS, 120, "back to min after the load", poll=2)


def test_a_worker_lost_under_load_replicas_return_on_the_survivor(cluster: tuple[RayCluster, Path]) -> None:
    ray, work = cluster
    wait_until(lambda: len(running(ray.replicas())) == MIN_REPLICAS, 120, "replicas at min before the load")
    load = ray.load(work / "rows.json", work / "kill.json", clients=8, seconds=300)
    started = time.monotonic()
    try:
        time.sleep(8)  # requests served before the loss
        on = [r["node_ip"] for r in running(ray.replicas())]
        lost, survivor = sorted(WORKERS, key=lambda w: -on.count(ray.address_of(w)))  # the worker with more replicas
        ray.net.hosts[lost].crash()  # power loss: raylet, workers and replicas of that worker
        killed_at = time.monotonic() - started
        survivor = ray.address_of(survivor)
        back = wait_until(lambda: (r := running(ray.replicas())) and len(r) >= MIN_REPLICAS
                          and {x["node_ip"] for x in r} == {survivor} and r, 180,
                          "min replicas RUNNING on the surviving worker", poll=2)
        recovered_at = time.monotonic() - started
        time.sleep(10)  # load on the recovered deployment
    finally:
        load.terminate()
        assert load.wait(90) == 0
    result = json.loads((work / "kill.json").read_text())
    events = result["events"]
    failed = [at for at, ok in events if not ok]
    print(f"{lost} lost with {on.count(ray.address_of(lost))} of {len(on)} replicas under load: {len(events)} "
          f"requests, {len(failed)} failed; {len(back)} replicas back on "
          f"{survivor} {recovered_at - killed_at:.0f} s after the loss; first errors: {result['errors'][:3]}")
    assert any(ok for at, ok in events if at < killed_at), "nothing served before the loss"
    after = [ok for at, ok in events if at > recovered_at + 3]  # started once replicas were back
    assert after and all(after), f"{after.count(False)} of {len(after)} failed after the replicas came back"
