"""TTL caches of the platform API: in-process by default, Redis when configured.

Two caches follow the deployment guide: twin state (a patient's current features, 60 s)
and prediction results (a twin's latest prediction, 300 s). In-process caches serve one
API process; with ``BIOVERSE_API_CACHE_URL=redis://...`` every API process shares them,
and an observation or a new prediction in one process is seen by all.

Values are JSON documents (dicts of plain values), so both backends store the same thing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from cachetools import TTLCache

__all__ = ["LocalCache", "RedisCache", "TTLStore", "make_cache"]


class TTLStore(Protocol):
    """A namespaced key -> JSON-document cache with one time-to-live."""

    ttl: float

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The cached documents among ``keys`` (misses are absent)."""

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        """Store documents for ``ttl`` seconds."""

    def delete(self, key: str) -> None:
        """Forget one key."""

    def clear(self) -> None:
        """Forget everything in this namespace."""


class LocalCache:
    """In-process TTL cache (cachetools), thread-safe."""

    def __init__(self, ttl: float, maxsize: int = 200_000) -> None:
        self.ttl = ttl
        self._data: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            data = self._data
            return {k: data[k] for k in keys if k in data}

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._data.update(items)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class RedisCache:
    """Redis-backed TTL cache: ``SET key json EX ttl``; keys prefixed by namespace."""

    def __init__(self, url: str, namespace: str, ttl: float) -> None:
        import redis

        self.ttl = ttl
        self.prefix = f"bioverse:{namespace}:"
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        if not keys:
            return {}
        values = self._redis.mget([self.prefix + k for k in keys])
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        if not items or self.ttl <= 0:
            return
        ttl_ms = max(int(self.ttl * 1000), 1)
        with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.prefix + key, json.dumps(value, default=str), px=ttl_ms)
            pipe.execute()

    def delete(self, key: str) -> None:
        self._redis.delete(self.prefix + key)

    def clear(self) -> None:
        keys = list(self._redis.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self._redis.delete(*keys)


def make_cache(url: str, namespace: str, ttl: float) -> TTLStore:
    """Redis when ``url`` is a redis:// URL, else in-process."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(url, namespace, ttl)
    if url:
        raise ValueError(f"cache URL must be empty (in-process) or redis://..., not {url!r}")
    return LocalCache(ttl)
