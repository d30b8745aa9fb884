"""TTL caches of the platform API (twin state, prediction results): in-process, or Redis when configured (docs/api.md)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from cachetools import TTLCache
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CACHE_ERRORS", "CacheErrorCollector", "LocalCache", "RedisCache", "TTLStore", "make_cache"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: (namespace, operation) -> Redis calls that failed and were answered without the cache.
CACHE_ERRORS: Counter[tuple[str, str]] = Counter()
_errors_lock = threading.Lock()


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
    """Redis-backed TTL cache: ``SET key json EX ttl``; keys prefixed by namespace.

    A Redis that does not answer degrades it to no cache (see the module's docstring).
    """

    RETRY_SECONDS = 5.0

    def __init__(self, url: str, namespace: str, ttl: float) -> None:
        import redis

        self.ttl = ttl
        self.namespace = namespace
        self.prefix = f"bioverse:{namespace}:"
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._down_until = 0.0

    def _call(self, operation: str, call: Callable[[], T], fallback: T) -> T:
        """``call()``, or ``fallback`` while Redis does not answer (logged and counted)."""
        if time.monotonic() < self._down_until:
            self._count(operation)
            return fallback
        try:
            return call()
        except self._errors as err:
            self._down_until = time.monotonic() + self.RETRY_SECONDS
            self._count(operation)
            log.error("cache %s: Redis does not answer (%s: %s); serving without the cache for %.0f s",
                      self.namespace, type(err).__name__, err, self.RETRY_SECONDS)
            return fallback

    def _count(self, operation: str) -> None:
        with _errors_lock:
            CACHE_ERRORS[(self.namespace, operation)] += 1

    def ping(self) -> None:
        """Raise if Redis does not answer now (readiness)."""
        self._redis.ping()

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        if not keys:
            return {}
        missed: list[Any] = [None] * len(keys)
        values: list[Any] = self._call("get", lambda: list(self._redis.mget([self.prefix + k for k in keys])), missed)
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        if not items or self.ttl <= 0:
            return
        ttl_ms = max(int(self.ttl * 1000), 1)

        def write() -> None:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self.prefix + key, json.dumps(value, default=str), px=ttl_ms)
                pipe.execute()

        self._call("set", write, None)

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self._redis.delete(self.prefix + key), None)

    def clear(self) -> None:
        def clear_all() -> None:
            keys = list(self._redis.scan_iter(match=self.prefix + "*", count=1000))
            if keys:
                self._redis.delete(*keys)

        self._call("clear", clear_all, None)


class CacheErrorCollector(Collector):
    """Exposes :data:`CACHE_ERRORS` as ``bioverse_cache_errors_total{cache, operation}``."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("bioverse_cache_errors", "Cache operations answered without Redis because it did not answer.",
                                     labels=("cache", "operation"))
        with _errors_lock:
            counts = dict(CACHE_ERRORS)
        for (namespace, operation), count in sorted(counts.items()):
            family.add_metric([namespace, operation], count)
        yield family


def make_cache(url: str, namespace: str, ttl: float) -> TTLStore:
    """Redis when ``url`` is a redis:// URL, else in-process."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(url, namespace, ttl)
    if url:
        raise ValueError(f"cache URL must be empty (in-process) or redis://..., not {url!r}")
    return LocalCache(ttl)
