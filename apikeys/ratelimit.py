"""Per-key fixed-window rate limits, per minute and per day.

Counted in Redis through one client shared by the process when
``APIKEYS["RATE_LIMIT_REDIS_URL"]`` is set, in Django's default cache otherwise.
Django's own ``RedisCache`` is not used for this: under ASGI it opens a connection per
request and never gives it back.
"""

import logging
import math
import time
from dataclasses import dataclass
from functools import cache

import redis
from django.core.cache import cache as django_cache

from .conf import get_config
from .exceptions import RateLimitExceeded, ServiceUnavailable

logger = logging.getLogger(__name__)

WINDOWS = (("minute", 60), ("day", 86_400))


@dataclass(frozen=True)
class Window:
    name: str
    limit: int
    count: int
    reset: int  # Unix time at which the window ends

    @property
    def remaining(self):
        return max(self.limit - self.count, 0)

    @property
    def exceeded(self):
        return self.count > self.limit


@dataclass(frozen=True)
class RateLimit:
    """The outcome of counting one request against both windows."""

    windows: tuple

    @property
    def binding(self):
        """The window closest to exhaustion; its figures go in the ``X-RateLimit-*`` headers."""
        # On a tie the longer window binds: it is the one that keeps refusing.
        return min(self.windows, key=lambda w: (not w.exceeded, w.remaining, -w.reset))

    def headers(self):
        window = self.binding
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(window.remaining),
            "X-RateLimit-Reset": str(window.reset),
        }


@cache
def redis_client(url):
    """Return the process's one Redis client for ``url`` (its pool is thread-safe)."""
    timeout = get_config()["RATE_LIMIT_TIMEOUT"]
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
    )


def _count_in_redis(url, keys):
    pipe = redis_client(url).pipeline(transaction=False)
    for key, ttl in keys:
        pipe.incr(key)
        pipe.expire(key, ttl)
    return pipe.execute()[::2]


def _count_in_cache(keys):
    counts = []
    for key, ttl in keys:
        django_cache.add(key, 0, ttl)
        try:
            counts.append(django_cache.incr(key))
        except ValueError:  # expired between add() and incr()
            django_cache.add(key, 1, ttl)
            counts.append(1)
    return counts


def hit(api_key, now=None):
    """Count one request for ``api_key`` and return its ``RateLimit``.

    Raise ``RateLimitExceeded`` over either limit, and ``ServiceUnavailable`` when the
    counter store is down and ``RATE_LIMIT_FAIL_OPEN`` is off (None is returned when it
    is on: the request goes through uncounted).
    """
    config = get_config()
    now = time.time() if now is None else now
    limits = {"minute": api_key.rate_limit_per_minute, "day": api_key.rate_limit_per_day}
    starts = {name: int(now // length) * length for name, length in WINDOWS}
    keys = [
        (f"{config['RATE_LIMIT_KEY_PREFIX']}:{api_key.pk}:{name}:{starts[name]}", length + 60)
        for name, length in WINDOWS
    ]
    try:
        url = config["RATE_LIMIT_REDIS_URL"]
        counts = _count_in_redis(url, keys) if url else _count_in_cache(keys)
    except Exception as exc:
        if config["RATE_LIMIT_FAIL_OPEN"]:
            logger.warning("Rate-limit store unavailable, request let through: %s", exc)
            return None
        logger.error("Rate-limit store unavailable, request refused: %s", exc)
        raise ServiceUnavailable("The rate-limit store is unavailable. Retry shortly.") from exc
    result = RateLimit(
        tuple(
            Window(name, limits[name], count, starts[name] + length)
            for (name, length), count in zip(WINDOWS, counts, strict=True)
        )
    )
    exceeded = [w for w in result.windows if w.exceeded]
    if exceeded:
        window = max(exceeded, key=lambda w: w.reset)
        retry_after = max(math.ceil(window.reset - now), 1)
        raise RateLimitExceeded(
            f"Rate limit of {window.limit} requests per {window.name} exceeded. "
            f"Retry after {retry_after} seconds.",
            details={"limit": window.limit, "window": window.name, "retry_after": retry_after},
            headers={**result.headers(), "Retry-After": str(retry_after)},
        )
    return result


def count(request, api_key):
    """Count ``request`` against ``api_key``'s limits once, and keep the outcome on it as
    ``request.rate_limit`` for the response's ``X-RateLimit-*`` headers."""
    if not hasattr(request, "rate_limit"):
        request.rate_limit = hit(api_key)
    return request.rate_limit
