"""Health endpoints for a load balancer or an orchestrator, unauthenticated and saying
nothing but up or down: liveness (the process answers) and readiness (PostgreSQL and
every Redis the site uses answer within ``EXECUTIONS["HEALTH_TIMEOUT"]`` seconds)."""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cache

import redis
from django.conf import settings
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from apikeys.conf import get_config as apikeys_config

from .conf import get_config

# Checks run here, so a check that hangs (a lost host) is given up after the timeout.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


@never_cache
def live(request):
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


@never_cache
def ready(request):
    """200 when the database and Redis answer, else 503; each check only says up or down."""
    checks = {"database": _within_timeout(database_answers)}
    urls = redis_urls()
    if urls:
        checks["redis"] = _within_timeout(lambda: all(redis_answers(url) for url in urls))
    states = {name: "up" if up else "down" for name, up in checks.items()}
    all_up = all(checks.values())
    return JsonResponse(
        {"status": "ok" if all_up else "unavailable", "checks": states},
        status=200 if all_up else 503,
    )


def _within_timeout(check):
    try:
        return bool(_checks.submit(check).result(timeout=get_config()["HEALTH_TIMEOUT"]))
    except (FutureTimeout, Exception):
        return False


def database_answers():
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    finally:
        connections.close_all()


def redis_urls():
    """The Redis URLs the site uses: the rate-limit counters' and the channel layer's."""
    urls = [apikeys_config()["RATE_LIMIT_REDIS_URL"]]
    layer = getattr(settings, "CHANNEL_LAYERS", {}).get(get_config()["CHANNEL_LAYER"], {})
    for host in layer.get("CONFIG", {}).get("hosts", []):
        urls.append(host.get("address") if isinstance(host, dict) else host)
    return sorted({url for url in urls if isinstance(url, str) and "://" in url})


@cache
def _client(url, timeout):
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_answers(url):
    return _client(url, get_config()["HEALTH_TIMEOUT"]).ping()
