"""The RiskPredictor deployment: batched risk predictions from the production model."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.errors import ServingError
from serving.follow import AliasFollower
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel

__all__ = ["RiskPredictor"]

log = logging.getLogger(__name__)


@serve.deployment(name="RiskPredictor", max_ongoing_requests=64)
class RiskPredictor:
    """Scores raw patient features with ``models:/<name>@<alias>``.

    Concurrent requests are batched (``@serve.batch``). A background thread follows the
    alias: a new version is loaded beside the old one and swapped in with one reference
    assignment, so requests in flight finish on the version they started with and none is
    dropped. Every prediction names the model version that made it.
    """

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "production", poll_seconds: float = 5.0) -> None:
        self.follower: AliasFollower[LoadedModel] = AliasFollower(
            RegistryModel(tracking_uri, model_name, alias), LoadedModel, poll_seconds=poll_seconds)
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
    async def _predict_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.model  # one version for the whole batch
        try:
            risks = model.predict(rows)
        except ServingError:
            # one bad row must not fail its neighbours: score them one by one
            return [self._one(model, row) for row in rows]
        self._count_unknown(model, rows)
        return [self._result(model, float(r)) for r in risks]

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

    async def predict(self, features: dict[str, Any]) -> dict[str, Any]:
        """One patient's risk (from a DeploymentHandle)."""
        return await self._predict_batch(features)

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP: ``{"instances": [{feature: value, ...}, ...]}`` -> ``{"predictions": [...]}``."""
        try:
            instances = (await request.json())["instances"]
        except Exception:  # noqa: BLE001 - any malformed body is the caller's error
            instances = None
        if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
            return JSONResponse({"detail": "body must be {\"instances\": [{feature: value}, ...]}"}, status_code=422)
        results = await asyncio.gather(*(self._predict_batch(i) for i in instances))
        errors = [(n, r["error"]) for n, r in enumerate(results) if "error" in r]
        if errors:
            return JSONResponse({"detail": f"instances[{errors[0][0]}]: {errors[0][1]}"}, status_code=422)
        return JSONResponse({"predictions": results})
