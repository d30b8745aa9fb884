"""The RiskPredictor deployment: batched risk predictions from the production model."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.errors import ServingError
from serving.follow import AliasFollower
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel
from serving.rollout_stats import StatsBuffer
from serving.routing import Route, TrafficSplit

__all__ = ["RiskPredictor"]

log = logging.getLogger(__name__)


@serve.deployment(name="RiskPredictor", max_ongoing_requests=64)
class RiskPredictor:
    """Scores raw patient features with ``models:/<name>@<alias>``.

    Concurrent requests are batched (``@serve.batch``). A background thread follows the
    alias: a new version is loaded beside the old one and swapped in with one reference
    assignment, so requests in flight finish on the version they started with and none is
    dropped. Every prediction names the model version that made it. During a staged rollout
    a request with a routing key (the twin id) goes where :func:`serving.routing.to_candidate`
    sends it, as in the API; per-version counts go to ``stats_url`` (default
    ``BIOVERSE_ROLLOUT_STATS_URL``: the platform database; unset: not counted).
    """

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "production", poll_seconds: float = 5.0,
                 stats_url: str | None = None) -> None:
        self.follower: AliasFollower[LoadedModel] = AliasFollower(
            RegistryModel(tracking_uri, model_name, alias), LoadedModel, poll_seconds=poll_seconds)
        url = stats_url or os.environ.get("BIOVERSE_ROLLOUT_STATS_URL", "")
        self.split = TrafficSplit(self.follower, stats=StatsBuffer(url) if url else None)
        self.unknown_categories = metrics.Counter(
            "bioverse_unknown_category_total",
            description="Scored rows whose categorical feature held a value the model never learned (scored as other).",
            tag_keys=("feature",))

    @property
    def model(self) -> LoadedModel:
        """The version being served now."""
        return self.follower.model

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve ``user_config``: ``poll_seconds``."""
        self.follower.poll_seconds = float(config.get("poll_seconds", self.follower.poll_seconds))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _predict_batch(self, items: list[tuple[dict[str, Any], str | None]]) -> list[dict[str, Any]]:
        route = self.split.fresh() or await asyncio.to_thread(self.split.current)  # one route for the whole batch
        groups: dict[str, tuple[LoadedModel, list[int]]] = {}
        for n, (_, key) in enumerate(items):
            model = route.pick(key)
            groups.setdefault(model.version, (model, []))[1].append(n)
        out: list[dict[str, Any]] = [{}] * len(items)
        for model, members in groups.values():
            for n, result in zip(members, self._score(route, model, [items[n][0] for n in members]), strict=True):
                out[n] = result
        return out

    def _score(self, route: Route, model: LoadedModel, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One version's share of a batch; a failed candidate's share goes to production."""
        try:
            risks = route.score(model, rows)
        except ServingError:
            # one bad row must not fail its neighbours: score them one by one
            return [self._one(model, row) for row in rows]
        if risks is None:
            return self._score(route, route.production, rows)
        if model is route.production:
            route.score_shadow(rows)
        self._count_unknown(model, rows)
        return [self._result(model, r) for r in risks]

    def _count_unknown(self, model: LoadedModel, rows: list[dict[str, Any]]) -> None:
        """``bioverse_unknown_category_total{feature}``: rows with a category the version never learned."""
        for feature, n in model.unknown_categories(rows).items():
            self.unknown_categories.inc(n, tags={"feature": feature})

    @staticmethod
    def _result(model: LoadedModel, risk: float) -> dict[str, Any]:
        """A prediction: the risk, the decision at the version's threshold, and the version."""
        return {"risk": risk, "decision": risk >= model.threshold, "threshold": model.threshold,
                "model_name": model.name, "model_version": model.version}

    @classmethod
    def _one(cls, model: LoadedModel, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return cls._result(model, float(model.predict([row])[0]))
        except ServingError as err:
            return {"error": str(err)}

    async def predict(self, features: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """One patient's risk (from a DeploymentHandle); ``key`` (the twin id) routes it during a rollout."""
        return await self._predict_batch((features, key))

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP: ``{"instances": [{feature: value, ...}, ...], "keys": [twin id, ...]}`` (keys
        optional: they route a rollout's share) -> ``{"predictions": [...]}``."""
        try:
            body = await request.json()
            instances, keys = body["instances"], body.get("keys")
        except Exception:  # noqa: BLE001 - any malformed body is the caller's error
            instances, keys = None, None
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            return JSONResponse({"detail": "body must be {\"instances\": [{feature: value}, ...]}"}, status_code=422)
        if keys is not None and (not isinstance(keys, list) or len(keys) != len(instances)
                                 or not all(isinstance(k, str) for k in keys)):
            return JSONResponse({"detail": "keys: one string (twin id) per instance"}, status_code=422)
        keyed = zip(instances, keys or [None] * len(instances), strict=True)
        results = await asyncio.gather(*(self._predict_batch(item) for item in keyed))
        errors = [(n, r["error"]) for n, r in enumerate(results) if "error" in r]
        if errors:
            return JSONResponse({"detail": f"instances[{errors[0][0]}]: {errors[0][1]}"}, status_code=422)
        return JSONResponse({"predictions": results})
