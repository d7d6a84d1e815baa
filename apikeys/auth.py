"""Authenticate requests by API key and check their scopes; one core for DRF and plain views."""

import logging
from functools import wraps

from django.core.exceptions import ValidationError
from django.core.validators import validate_ipv46_address
from django.utils import timezone

from . import ratelimit, tokens
from .asyncdb import run_in_short_session
from .conf import get_config
from .exceptions import (
    APIError,
    ExpiredAPIKey,
    InsufficientScope,
    InternalError,
    InvalidAPIKey,
    RevokedAPIKey,
)
from .models import APIKey
from .responses import error_response

logger = logging.getLogger(__name__)

BEARER = "bearer "


def raw_key_from(request):
    """Return the key sent in ``X-API-Key`` or ``Authorization: Bearer``, or None."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    authorization = request.headers.get("Authorization", "")
    if authorization[: len(BEARER)].lower() == BEARER:
        return authorization[len(BEARER) :].strip()
    return None


def find_key(raw):
    """Return the usable ``APIKey`` for a raw key or raise the matching ``APIError``."""
    mode = tokens.mode_of(raw or "")
    if mode is None or (mode == APIKey.Mode.TEST and not get_config()["ACCEPT_TEST_KEYS"]):
        raise InvalidAPIKey
    stored = tokens.digest(raw)
    key = APIKey.objects.select_related("owner").filter(key_hash=stored).first()
    if key is None or not tokens.matches(raw, key.key_hash) or not key.owner.is_active:
        raise InvalidAPIKey
    if key.revoked_at is not None:
        raise RevokedAPIKey
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise ExpiredAPIKey
    return key


def client_ip(request):
    """Return ``REMOTE_ADDR`` when it is an IP address, else None (it is stored as one)."""
    address = request.META.get("REMOTE_ADDR")
    try:
        validate_ipv46_address(address)
    except ValidationError:
        return None
    return address


def authenticate(request):
    """Authenticate ``request`` and count it against the key's rate limits.

    Set ``request.api_key`` and ``request.rate_limit`` and return the key; raise an
    ``APIError`` when the key is missing, unknown, revoked, expired or over its limit.
    """
    key = find_key(raw_key_from(request))
    request.api_key = key
    key.record_use(client_ip(request))
    request.rate_limit = ratelimit.hit(key)
    return key


async def aauthenticate(request):
    """``authenticate()`` for async views: no request-bound thread or connection is held."""
    return await run_in_short_session(authenticate, request)


def check_scopes(key, required):
    """Raise ``InsufficientScope`` unless ``key`` holds every scope in ``required``."""
    held = set(key.scopes)
    missing = [scope for scope in required if scope not in held]
    if missing:
        raise InsufficientScope(
            f"This API key lacks the scope{'s' if len(missing) > 1 else ''} {', '.join(missing)}.",
            details={
                "required_scopes": list(required),
                "missing_scopes": missing,
                "your_scopes": list(key.scopes),
            },
        )


def usable_key_scopes(key_ids):
    """Return ``{pk: scopes}`` for those of ``key_ids`` that still authenticate: not
    revoked or expired, owner active."""
    return dict(
        APIKey.objects.active()
        .filter(pk__in=key_ids, owner__is_active=True)
        .values_list("pk", "scopes")
    )


def scopes_required(*scopes):
    """Decorate an async view: authenticate by API key, require ``scopes``, answer errors
    in the contract's envelope."""

    def decorator(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            try:
                key = await aauthenticate(request)
                check_scopes(key, scopes)
                return await view(request, *args, **kwargs)
            except APIError as error:
                return error_response(request, error)
            except Exception:
                logger.exception("Unhandled error in %s", view.__qualname__)
                return error_response(request, InternalError())

        wrapper.required_scopes = scopes
        return wrapper

    return decorator
