"""Authenticate requests by API key and check their scopes: the core under the DRF classes,
the async views' decorator and the event stream."""

from functools import wraps

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_ipv46_address
from django.db import router
from django.utils import timezone

from . import keys, ratelimit
from .asyncdb import run_in_short_session
from .compiled import CompiledQuery, concrete_attnames
from .conf import get_config
from .exceptions import (
    ExpiredAPIKey,
    InsufficientScope,
    InvalidAPIKey,
    RevokedAPIKey,
    ValidationError,
    answers_api_errors,
)
from .models import APIKey

HEADER = "X-API-Key"
KEYWORD = "Bearer"


def raw_key_from(request, header=HEADER, keyword=KEYWORD):
    """Return the key sent in ``header`` or as ``Authorization: <keyword> <key>``, or None.

    A ``keyword`` credential that does not start like one of ours (``fm_``) belongs to
    another scheme, a host's own tokens for example, and is left to it.
    """
    key = (request.headers.get(header) or "").strip() or None
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    bearer = None
    if scheme.lower() == keyword.lower() and credential.startswith(keys.FAMILY_PREFIX):
        bearer = credential
    if key and bearer and key != bearer:
        # RFC 6750 section 2: a client must not send credentials more than one way.
        raise ValidationError(
            f"The request sends two different API keys ({header} and Authorization).",
            details={"headers": [header, "Authorization"]},
        )
    return key or bearer


def find_key(raw):
    """Return the usable ``APIKey`` for a raw key or raise the matching ``APIError``."""
    mode = keys.mode_of(raw or "")
    if mode is None or not mode_accepted(mode):
        raise InvalidAPIKey
    key = key_with_owner(key_hash=keys.digest(raw))
    if key is None or not keys.matches(raw, key.key_hash):
        raise InvalidAPIKey
    return usable(key)


def _key_with_owner_query(shape, **lookup):
    owner_names = (f"owner__{name}" for name in concrete_attnames(get_user_model()))
    names = [*concrete_attnames(APIKey), *owner_names]
    return APIKey.objects.filter(**lookup).order_by().values_list(*names)[:1]


KEY_WITH_OWNER = CompiledQuery(_key_with_owner_query)


def key_with_owner(**lookup):
    """Return the ``APIKey`` that ``lookup`` (one unique field) finds, its owner loaded, in
    one query; or None."""
    using = router.db_for_read(APIKey)
    rows = KEY_WITH_OWNER.rows(using, **lookup)
    if not rows:
        return None
    user_model, key_names = get_user_model(), concrete_attnames(APIKey)
    key = APIKey.from_db(using, key_names, rows[0][: len(key_names)])
    key.owner = user_model.from_db(using, concrete_attnames(user_model), rows[0][len(key_names) :])
    return key


def mode_accepted(mode):
    return mode != APIKey.Mode.TEST or get_config()["ACCEPT_TEST_KEYS"]


def usable(key):
    """Return ``key`` if it may authenticate now, else raise the matching ``APIError``."""
    if not key.owner.is_active or not mode_accepted(key.mode):
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
    except DjangoValidationError:
        return None
    return address


def key_from_request(request, header=HEADER, keyword=KEYWORD):
    """Return the ``APIKey`` the request authenticates with, or None when it sends no key;
    raise an ``APIError`` for a key that is sent and not usable."""
    raw = raw_key_from(request, header, keyword)
    if raw is None:
        return None
    key = find_key(raw)
    key.record_use(client_ip(request))
    return key


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


def _authenticate_and_count(request):
    key = key_from_request(request)
    if key is None:
        raise InvalidAPIKey
    ratelimit.count(request, key)
    return key


def scopes_required(*scopes):
    """Decorate an async view: authenticate by API key (``request.api_key``), count the
    request against the key's rate limits, require ``scopes``, and answer errors in the
    contract's envelope."""

    def decorator(view):
        @answers_api_errors
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            key = request.api_key = await run_in_short_session(_authenticate_and_count, request)
            check_scopes(key, scopes)
            return await view(request, *args, **kwargs)

        wrapper.required_scopes = scopes
        return wrapper

    return decorator
