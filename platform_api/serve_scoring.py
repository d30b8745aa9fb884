"""The API's pooled HTTP client of the Ray Serve risk deployment (``BIOVERSE_API_RISK_SCORING=serve``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from platform_api.errors import Unavailable
from platform_api.service_client import ServiceClient
from serving.errors import PredictionInputError
from serving.loaded import LoadedModel

__all__ = ["ServeRiskClient", "ServedVersion", "serve_risk_client"]

@dataclass(frozen=True)
class ServedVersion:
    """The version that scored a row in Serve, as the scorer records it: name, version and
    threshold from Serve's answer; ``features`` and ``unknown_categories`` from the
    production version the API follows itself (the inputs it looked up and sent)."""

    name: str
    version: str
    threshold: float
    local: LoadedModel

    @property
    def features(self) -> tuple[str, ...]:
        """The input columns sent."""
        return self.local.features

    def unknown_categories(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Per categorical feature, rows with a value the version never learned."""
        return self.local.unknown_categories(rows)


class ServeRiskClient(ServiceClient):
    """Posts feature rows to the ``RiskPredictor`` route of Serve's HTTP proxy.

    One pooled ``httpx.AsyncClient`` (keep-alive connections up to ``connections``) per
    event loop. Every failure to get a whole, well-formed answer is :class:`Unavailable`
    (503) with what happened; a row the deployment refuses is :class:`PredictionInputError`
    (422) with its detail.

    Args:
        url: The risk application's route, e.g. ``http://127.0.0.1:8000/risk``.
        timeout: Seconds to wait for an answer.
        connections: Most connections open to the proxy at once.
    """

    service = "risk service"

    async def predict(self, model: LoadedModel, rows: list[dict[str, Any]],
                      keys: list[str]) -> list[tuple[ServedVersion, float]]:
        """Per row, the version that scored it and the risk. ``keys`` (the twin ids) route a
        rollout's share inside Serve, as the API's own routing does in process.

        Raises:
            Unavailable: Serve does not answer, times out, has no running risk application,
                or answers something else than one prediction per row.
            PredictionInputError: the deployment refused a row (422).
        """
        predictions = await self._post(rows, keys)
        versions: dict[tuple[str, str, float], ServedVersion] = {}
        out = []
        for p in predictions:
            key = (str(p["model_name"]), str(p["model_version"]), float(p["threshold"]))
            served = versions.get(key) or versions.setdefault(key, ServedVersion(*key, model))
            out.append((served, float(p["risk"])))
        return out

    async def _post(self, rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
        response, body, detail = await self._send(json={"instances": rows, "keys": keys})
        if response.status_code == 422:
            raise PredictionInputError(detail or "the risk service refused the features")
        if response.status_code == 404:
            raise Unavailable(f"no risk application at {self.url} (is it deployed and RUNNING? `bioverse serve status`)")
        predictions = body.get("predictions") if response.status_code == 200 and isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(rows) or not all(
                isinstance(p, dict) and {"risk", "model_name", "model_version", "threshold"} <= p.keys() for p in predictions):
            raise Unavailable(f"the risk service at {self.url} answered {response.status_code}"
                              + (f": {detail}" if detail else " without a prediction per twin")
                              + "; is a risk model approved for production and its application RUNNING?")
        return predictions


@functools.cache
def serve_risk_client(url: str, timeout: float, connections: int) -> ServeRiskClient:
    """The process's client of one risk route (one per settings, so a settings change gets its own)."""
    return ServeRiskClient(url, timeout, connections)
