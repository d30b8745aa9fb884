"""Serve on a running Ray cluster: apply a config through the dashboard's REST API, read where replicas run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from serving.errors import ServingError

__all__ = ["ClusterUnreachable", "DeployFailed", "DeploymentView", "ReplicaView", "ServeCluster",
           "ServeClusterError", "ServeConfigRejected", "deployment_views"]

#: Ray's Serve REST endpoint (what ``serve deploy`` and ``serve status`` call).
APPLICATIONS_PATH = "/api/serve/applications/"


class ServeClusterError(ServingError):
    """Base of the errors met while deploying to, or reading, a Ray cluster's Serve."""


class ClusterUnreachable(ServeClusterError):
    """No Ray dashboard answers at the address (cluster down, wrong address or port)."""


class ServeConfigRejected(ServeClusterError):
    """The cluster refused the Serve config (schema or value errors), with Ray's reason."""


class DeployFailed(ServeClusterError):
    """An application ended DEPLOY_FAILED or UNHEALTHY, or was not RUNNING in time."""


@dataclass(frozen=True)
class ReplicaView:
    """One replica: its id, state and the node it runs on."""

    replica_id: str
    state: str
    node_ip: str | None
    node_id: str | None
    pid: int | None = None


@dataclass(frozen=True)
class DeploymentView:
    """One deployment of an application, its replicas and its autoscaling bounds."""

    application: str
    route_prefix: str | None
    application_status: str
    name: str
    status: str
    target_replicas: int
    min_replicas: int | None
    max_replicas: int | None
    target_ongoing_requests: float | None
    message: str = ""
    replicas: list[ReplicaView] = field(default_factory=list)

    @property
    def running_nodes(self) -> set[str]:
        """Node ids of the RUNNING replicas."""
        return {r.node_id or r.node_ip or "" for r in self.replicas if r.state == "RUNNING"}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``bioverse serve status --json``)."""
        return asdict(self)


def short_message(message: str, limit: int = 240) -> str:
    """Ray's message in one line: a traceback is cut down to the line that names the error."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    if any("Traceback (most recent call last)" in line for line in lines):
        head = lines[0].split("Traceback")[0].strip()
        text = f"{head} {lines[-1]}".strip()
    else:
        text = " ".join(lines)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def deployment_views(details: dict[str, Any]) -> list[DeploymentView]:
    """The deployments in a ``GET /api/serve/applications/`` answer, application by application."""
    views = []
    for app_name, app in sorted((details.get("applications") or {}).items()):
        for name, deployment in sorted((app.get("deployments") or {}).items()):
            autoscaling = (deployment.get("deployment_config") or {}).get("autoscaling_config") or {}
            replicas = [ReplicaView(r.get("replica_id", ""), r.get("state", ""), r.get("node_ip"), r.get("node_id"),
                                    r.get("pid")) for r in deployment.get("replicas") or []]
            views.append(DeploymentView(
                application=app_name, route_prefix=app.get("route_prefix"), application_status=app.get("status", ""),
                name=name, status=deployment.get("status", ""),
                target_replicas=int(deployment.get("target_num_replicas") or 0),
                min_replicas=autoscaling.get("min_replicas"), max_replicas=autoscaling.get("max_replicas"),
                target_ongoing_requests=autoscaling.get("target_ongoing_requests"),
                message=short_message(deployment.get("message") or ""), replicas=replicas))
    return views


class ServeCluster:
    """A Ray cluster's Serve, through its dashboard (``http://HEAD:8265``)."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        self.address = address.rstrip("/")
        if "://" not in self.address:
            self.address = f"http://{self.address}"
        self.timeout = timeout

    def _request(self, method: str, json: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return httpx.request(method, self.address + APPLICATIONS_PATH, json=json, timeout=self.timeout)
        except httpx.HTTPError as err:
            raise ClusterUnreachable(f"no Ray dashboard at {self.address} ({type(err).__name__}: {err}); "
                                     "is the head up (ray start --head --dashboard-host ...)?") from err

    def details(self) -> dict[str, Any]:
        """Serve's applications, deployments and replicas as the cluster reports them."""
        response = self._request("GET")
        if response.status_code != 200:
            raise ClusterUnreachable(f"{self.address}{APPLICATIONS_PATH} answered {response.status_code}: "
                                     f"{short_message(response.text)}")
        try:
            return response.json()
        except ValueError as err:
            raise ClusterUnreachable(f"{self.address} is not a Ray dashboard (answer is not JSON)") from err

    def deployments(self) -> list[DeploymentView]:
        """Every deployment with its replicas and the node each runs on."""
        return deployment_views(self.details())

    def apply(self, config: dict[str, Any]) -> None:
        """Declare ``config`` (a Serve config) the cluster's applications, as ``serve deploy`` does.

        Raises:
            ClusterUnreachable: no dashboard at the address.
            ServeConfigRejected: the cluster refused the config.
        """
        response = self._request("PUT", json=config)
        if response.status_code == 200:
            return
        if response.status_code in (400, 422):
            raise ServeConfigRejected(f"the cluster refused the Serve config: {short_message(response.text)}")
        raise ClusterUnreachable(f"PUT {self.address}{APPLICATIONS_PATH} answered {response.status_code}: "
                                 f"{short_message(response.text)}")

    def deploy(self, config: dict[str, Any], *, timeout: float = 300.0, poll: float = 1.0) -> list[DeploymentView]:
        """Apply ``config`` and wait (at most ``timeout`` s) until each of its applications is RUNNING.

        Raises:
            DeployFailed: an application DEPLOY_FAILED or UNHEALTHY (Ray's message), or not
                RUNNING within ``timeout``.
        """
        names = [a["name"] for a in config.get("applications", [])]
        before = {name: app.get("last_deployed_time_s") for name, app in
                  (self.details().get("applications") or {}).items()}
        self.apply(config)
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            applications = self.details().get("applications") or {}
            states = {}
            for name in names:
                app = applications.get(name)
                fresh = app is not None and app.get("last_deployed_time_s") != before.get(name)
                status = app.get("status", "") if app is not None and fresh else "NOT_STARTED"
                if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise DeployFailed(f"application {name!r} {status}: {short_message(app.get('message') or '')}")
                states[name] = status
            if all(s == "RUNNING" for s in states.values()):
                return [v for v in deployment_views(self.details()) if v.application in names]
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{n} {s}" for n, s in states.items() if s != "RUNNING")
                raise DeployFailed(f"not RUNNING within {timeout:.0f} s: {waiting}")
            time.sleep(poll)
