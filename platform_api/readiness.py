"""Readiness (``/readyz``): each dependency the API is configured with answers now (docs/api.md)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text

from feature_store.errors import FeatureStoreError
from platform_api.cache import RedisCache
from platform_api.db import get_engine
from platform_api.errors import DependencyDown
from platform_api.services import get_features, get_models, get_prediction_cache
from serving.errors import ModelNotReadyError

__all__ = ["OK", "check_readiness"]

log = logging.getLogger(__name__)
OK = "ok"


def _database() -> str:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure means not ready
        raise DependencyDown(f"does not answer ({type(err).__name__})") from err
    return OK


def _cache() -> str:
    redis = [c for c in (get_features().cache, get_prediction_cache()) if isinstance(c, RedisCache)]
    if not redis:
        return "in-process"
    for cache in redis:
        try:
            cache.ping()
        except Exception as err:  # noqa: BLE001
            raise DependencyDown(f"Redis does not answer ({type(err).__name__}); requests are served without it") from err
    return OK


def _feature_store() -> str:
    features = get_features()
    if not (features.repo.repo_dir / "feature_store.yaml").exists():
        return "not set up (twins are served without features)"
    try:
        features.repo.online_features("readyz", ["readyz"], ["vitals:systolic_bp"])
    except FeatureStoreError as err:
        raise DependencyDown(str(err)) from err
    except Exception as err:  # noqa: BLE001
        raise DependencyDown(f"does not answer ({type(err).__name__})") from err
    return OK


def _model() -> str:
    models = get_models()
    try:
        model = models.current()
    except ModelNotReadyError as err:
        cause = err.__cause__
        if getattr(cause, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return f"none approved yet ({err}); predictions answer 503"
        raise DependencyDown(str(err)) from err
    except Exception as err:  # noqa: BLE001 - the registry itself does not answer
        raise DependencyDown(f"the registry does not answer ({type(err).__name__})") from err
    return f"{OK}: {model.name} version {model.version}"


def check_readiness() -> tuple[bool, dict[str, Any]]:
    """(ready, body): every check's outcome; not ready names what is down."""
    checks: dict[str, str] = {}
    down = []
    for name, check in (("database", _database), ("cache", _cache), ("feature_store", _feature_store), ("model", _model)):
        try:
            checks[name] = check()
        except DependencyDown as err:
            checks[name] = f"down: {err}"
            down.append(name)
    if down:
        log.error("not ready: %s", "; ".join(f"{n} {checks[n]}" for n in down))
        return False, {"status": "not ready", "detail": f"not ready: {', '.join(down)} down", "checks": checks}
    return True, {"status": "ready", "checks": checks}
