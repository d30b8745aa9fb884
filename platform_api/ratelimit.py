"""Rate limits at the edge: token buckets for the OAuth2 token endpoint and failed key checks.

Two limits, both in process (each API process counts on its own):

* ``POST /v1/oauth/token``: every request takes a token from the bucket of its source
  address and from the bucket of the client id it names; either empty answers 429.
* Failed credential checks (401) anywhere: each failure takes a token from the bucket of
  its source address; while that bucket is empty, credentials the process has not already
  verified answer 429 without reaching the database (verified ones, in the principal
  cache, still pass, so a valid key behind the same address keeps working).

A bucket holds ``burst`` tokens and refills ``per_minute`` tokens a minute; a 429 carries
``Retry-After`` (whole seconds until a token is back). Buckets idle long enough to be full
again are forgotten, so memory stays bounded whatever addresses send.
"""

from __future__ import annotations

import math
import threading
import time

from cachetools import TTLCache

__all__ = ["RateLimits", "TokenBuckets"]


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


class RateLimits:
    """The API's two limits (``app.state.rate_limits``), each ``burst`` deep and ``per_minute`` fast."""

    def __init__(self, *, per_minute: float, burst: int) -> None:
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
