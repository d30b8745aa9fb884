"""Rate limits at the edge: token buckets for the OAuth2 token endpoint and failed key checks (docs/api.md)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from cachetools import TTLCache

__all__ = ["RETRY_SECONDS", "RateLimits", "RedisTokenBuckets", "TokenBuckets"]

log = logging.getLogger(__name__)

#: After a Redis error, how long the process's own buckets stand in before Redis is asked again.
RETRY_SECONDS = 5.0


class TokenBuckets:
    """Token buckets by key (an address, a client id): ``burst`` tokens, refilled at ``per_minute``."""

    def __init__(self, *, per_minute: float, burst: int, max_keys: int = 100_000) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        refill_seconds = burst / self.rate  # an idle bucket is full again after this long
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(maxsize=max_keys, ttl=refill_seconds)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - stamp) * self.rate)

    def take(self, key: str) -> float:
        """Take one token: 0 if there was one, else the seconds until one is back (none taken)."""
        with self._lock:
            now = time.monotonic()
            tokens = self._level(key, now)
            if tokens < 1.0:
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 if it has one now); takes nothing."""
        with self._lock:
            tokens = self._level(key, time.monotonic())
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


# KEYS[1]: the bucket; ARGV: rate per second, burst, take (1) or only look (0). Returns the wait in seconds.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst, take = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
if tokens < 1 then return tostring((1 - tokens) / rate) end
if take == 1 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'stamp', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000))
end
return '0'
"""


class RedisTokenBuckets:
    """:class:`TokenBuckets` kept in Redis (shared by every API process), with the process's
    own buckets standing in while Redis does not answer."""

    def __init__(self, url: str, name: str, *, per_minute: float, burst: int, prefix: str = "bioverse:ratelimit") -> None:
        import redis

        self.local = TokenBuckets(per_minute=per_minute, burst=burst)
        self.rate, self.burst = per_minute / 60.0, burst
        self.prefix = f"{prefix}:{name}:"
        self._client: Any = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._script = self._client.register_script(_TAKE)
        self._down_until = 0.0

    def _ask(self, key: str, take: bool) -> float | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            return float(self._script(keys=[self.prefix + key], args=[self.rate, self.burst, int(take)]))
        except Exception as err:  # noqa: BLE001 - any Redis failure: the process's buckets stand in
            self._down_until = time.monotonic() + RETRY_SECONDS
            log.warning("rate limits: Redis does not answer (%s); in-process buckets for %.0f s",
                        type(err).__name__, RETRY_SECONDS)
            return None

    def take(self, key: str) -> float:
        """As :meth:`TokenBuckets.take`, on the shared bucket."""
        wait = self._ask(key, take=True)
        return self.local.take(key) if wait is None else wait

    def wait(self, key: str) -> float:
        """As :meth:`TokenBuckets.wait`, on the shared bucket."""
        wait = self._ask(key, take=False)
        return self.local.wait(key) if wait is None else wait


class RateLimits:
    """The API's two limits (``app.state.rate_limits``), each ``burst`` deep and ``per_minute``
    fast; shared through Redis when ``redis_url`` is given."""

    def __init__(self, *, per_minute: float, burst: int, redis_url: str | None = None,
                 prefix: str = "bioverse:ratelimit") -> None:
        self.token_requests: TokenBuckets | RedisTokenBuckets
        self.auth_failures: TokenBuckets | RedisTokenBuckets
        if redis_url:
            self.token_requests = RedisTokenBuckets(redis_url, "token", per_minute=per_minute, burst=burst, prefix=prefix)
            self.auth_failures = RedisTokenBuckets(redis_url, "auth", per_minute=per_minute, burst=burst, prefix=prefix)
        else:
            self.token_requests = TokenBuckets(per_minute=per_minute, burst=burst)
            self.auth_failures = TokenBuckets(per_minute=per_minute, burst=burst)

    def token_request(self, address: str, client_id: str | None) -> int:
        """Charge a token-endpoint request; 0 if allowed, else Retry-After seconds."""
        wait = self.token_requests.take(f"addr:{address}")
        if wait == 0.0 and client_id:
            wait = self.token_requests.take(f"client:{client_id}")
        return _seconds(wait)

    def auth_blocked(self, address: str) -> int:
        """0 if ``address`` may have its credentials checked, else Retry-After seconds."""
        return _seconds(self.auth_failures.wait(address))

    def auth_failed(self, address: str) -> None:
        """Count one failed credential check from ``address``."""
        self.auth_failures.take(address)


def _seconds(wait: float) -> int:
    return 0 if wait <= 0 else max(1, math.ceil(wait))
