"""The API's TTL caches: in-process and on the real Redis service, one behaviour."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from platform_api.cache import LocalCache, RedisCache, TTLStore, make_cache

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["local", "redis"])
def make(request: pytest.FixtureRequest) -> Iterator:  # type: ignore[type-arg]
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    made: list[TTLStore] = []

    def build(ttl: float) -> TTLStore:
        cache = LocalCache(ttl) if request.param == "local" else RedisCache(REDIS, namespace, ttl)
        made.append(cache)
        return cache

    yield build
    for cache in made:
        cache.clear()


def test_get_set_delete_and_expiry(make) -> None:  # type: ignore[no-untyped-def]
    cache = make(0.5)
    cache.set_many({"t1|p1": {"age": 63.0, "sex": "F", "bp": None}, "t1|p2": {"age": 40.0}})
    assert cache.get_many(["t1|p1", "t1|p2", "t1|p3"]) == {"t1|p1": {"age": 63.0, "sex": "F", "bp": None},
                                                             "t1|p2": {"age": 40.0}}
    cache.delete("t1|p1")
    assert cache.get_many(["t1|p1"]) == {}
    time.sleep(0.7)
    assert cache.get_many(["t1|p2"]) == {}  # expired


def test_redis_cache_is_shared_between_processes_and_namespaced() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    one, other = make_cache(REDIS, namespace, 60), make_cache(REDIS, namespace, 60)  # two API processes
    elsewhere = make_cache(REDIS, namespace + "-x", 60)
    try:
        one.set_many({"t1|p1": {"risk": 0.4}})
        assert other.get_many(["t1|p1"]) == {"t1|p1": {"risk": 0.4}}
        assert elsewhere.get_many(["t1|p1"]) == {}
        other.delete("t1|p1")  # an observation in the other process invalidates for both
        assert one.get_many(["t1|p1"]) == {}
    finally:
        one.clear()


def test_cache_url_must_be_redis_or_empty() -> None:
    assert isinstance(make_cache("", "x", 1), LocalCache)
    with pytest.raises(ValueError, match="redis://"):
        make_cache("memcached://x", "x", 1)
