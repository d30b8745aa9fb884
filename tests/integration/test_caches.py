"""The API's TTL caches: in-process and on the real Redis service, one behaviour."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

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


def test_redis_down_degrades_to_no_cache_counted_and_comes_back() -> None:
    """Issue 10 item 15: a Redis that dies is a miss, not an error; it is retried later."""
    from platform_api.cache import CACHE_ERRORS
    from tests.integration.test_input_contracts import OwnRedis

    own = OwnRedis().start()
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    cache = RedisCache(f"redis://127.0.0.1:{own.port}/0", namespace, 60)
    cache.RETRY_SECONDS = 0.5
    try:
        cache.set_many({"t1|p1": {"age": 50.0}})
        assert cache.get_many(["t1|p1"]) == {"t1|p1": {"age": 50.0}}
        own.stop()
        started = time.monotonic()
        assert cache.get_many(["t1|p1"]) == {}
        cache.set_many({"t1|p2": {"age": 60.0}})
        cache.delete("t1|p1")
        cache.clear()
        assert time.monotonic() - started < 2.0  # refused connections, then the breaker: no timeouts piled up
        assert CACHE_ERRORS[(namespace, "get")] == 1 and CACHE_ERRORS[(namespace, "set")] == 1
        assert CACHE_ERRORS[(namespace, "delete")] == 1 and CACHE_ERRORS[(namespace, "clear")] == 1
        with pytest.raises(redis.exceptions.ConnectionError):  # readiness still sees it down
            cache.ping()
        own.process = None
        revived = OwnRedis()
        revived.port = own.port
        revived.start()
        try:
            time.sleep(0.6)  # past RETRY_SECONDS: Redis is asked again
            cache.set_many({"t1|p3": {"age": 70.0}})
            assert cache.get_many(["t1|p3"]) == {"t1|p3": {"age": 70.0}}
        finally:
            revived.stop()
    finally:
        own.stop()
