"""Stream tokens: short-lived, signed permissions to open one execution's event stream
without a header (``?token=``), for a browser's ``EventSource`` on another origin.

A token names the execution and the API key that minted it, and is signed with the
site's ``SECRET_KEY`` (Django's signing framework); it grants nothing else. It must be
valid when a stream opens (``EXECUTIONS["STREAM_TOKEN_TTL"]`` seconds); the stream it
opens then lasts as long as the key may read.
"""

from datetime import timedelta

from django.core import signing
from django.utils import timezone

from apikeys.exceptions import WWW_AUTHENTICATE, APIError

from .conf import get_config

SALT = "executions.stream-token"
# Far longer than any token mint() makes; longer ones are not even looked at.
MAX_LENGTH = 500


class InvalidStreamToken(APIError):
    status_code = 401
    default_headers = WWW_AUTHENTICATE
    default_code = "invalid_stream_token"
    default_detail = "The stream token is not valid for this execution."


class ExpiredStreamToken(APIError):
    status_code = 401
    default_headers = WWW_AUTHENTICATE
    default_code = "expired_stream_token"
    default_detail = "The stream token has expired; ask for a new one."


def mint(execution_id, key):
    """Return ``(token, expires_at)`` for streaming ``execution_id`` on ``key``'s behalf."""
    token = signing.dumps({"execution": execution_id, "key": key.pk}, salt=SALT)
    return token, timezone.now() + timedelta(seconds=get_config()["STREAM_TOKEN_TTL"])


def key_id_of(token, execution_id):
    """Return the id of the key that minted ``token`` for ``execution_id``; raise
    ``ExpiredStreamToken`` or ``InvalidStreamToken`` (malformed, forged, another
    execution's)."""
    if len(token) > MAX_LENGTH:
        raise InvalidStreamToken
    try:
        claims = signing.loads(token, salt=SALT, max_age=get_config()["STREAM_TOKEN_TTL"])
    except signing.SignatureExpired:
        raise ExpiredStreamToken from None
    except (signing.BadSignature, ValueError):
        raise InvalidStreamToken from None
    if not isinstance(claims, dict) or claims.get("execution") != execution_id:
        raise InvalidStreamToken
    key_id = claims.get("key")
    if not isinstance(key_id, int):
        raise InvalidStreamToken
    return key_id
