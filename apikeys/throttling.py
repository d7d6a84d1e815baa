"""Django REST framework throttle: the API key's per-minute and per-day rate limits."""

from rest_framework.throttling import BaseThrottle

from . import ratelimit
from .models import APIKey


class APIKeyRateThrottle(BaseThrottle):
    """Count each request of an API key against its key's limits (once per request);
    over a limit, ``429 rate_limit_exceeded`` with ``Retry-After``."""

    def allow_request(self, request, view):
        if isinstance(request.auth, APIKey):
            ratelimit.count(request._request, request.auth)
        return True
