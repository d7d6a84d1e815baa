"""What opens an event stream, and how an open stream tells that it still may read.

A request to the stream is let in by a *grant*. The kinds of grant a site accepts are
listed in ``EXECUTIONS["STREAM_GRANTS"]``; the stream asks each kind in turn, and the
first that finds its credential in the request opens the stream. While it is open, the
fan-out's ticker asks each kind, once per tick and in one query for all of its open
streams, which of their grants still hold, and ends the streams of those that do not.

A new kind subclasses ``BaseGrant`` and is added to the setting; nothing else changes.
"""

from functools import cache

from django.contrib.auth import HASH_SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare
from django.utils.module_loading import import_string

from apikeys import ratelimit
from apikeys.auth import key_from_request, key_with_owner, usable, usable_key_scopes
from apikeys.exceptions import InvalidAPIKey

from . import tokens
from .conf import get_config

# What a session or a stream token holds: they open event streams and nothing else.
STREAM_SCOPES = ("executions:read",)
SESSION_SCOPES = frozenset(STREAM_SCOPES)


class BaseGrant:
    """What an open stream may read.

    - ``owner_id``: the user whose executions it sees; None for every owner (staff).
    - ``mode``: ``"live"`` or ``"test"``, the mode of the executions it sees; None for both.
    - ``scopes``: the scopes it holds, a tuple in the order they were granted.
    - ``display``: names it in logs, never with a secret (a key's prefix, a user's id).
    - ``quota``: whom its open streams count against (``MAX_STREAMS_PER_KEY``), or None.

    Grants compare by identity: each open stream holds its own.
    """

    __slots__ = ("display", "mode", "owner_id", "quota", "scopes")

    def __init__(self, *, owner_id, mode, scopes, display, quota=None):
        self.owner_id, self.mode = owner_id, mode
        self.scopes, self.display, self.quota = tuple(scopes), display, quota

    def __repr__(self):
        return f"<{type(self).__name__} {self.display}>"

    @classmethod
    def from_request(cls, request, execution_id):
        """Return the grant the request carries for the stream of ``execution_id``, or None
        when it carries no credential of this kind; raise an ``APIError`` for a credential
        that is present and not valid. Runs in a short database session."""
        raise NotImplementedError

    @classmethod
    def current_scopes(cls, grants):
        """Return ``{grant: scopes}`` for those of ``grants`` (all of this class) that are
        still valid, with the scopes they hold now, in one query however many there are."""
        raise NotImplementedError


class APIKeyGrant(BaseGrant):
    """A stream opened with an API key: the key's owner and mode, the key's scopes, valid
    while the key is neither revoked nor expired and its owner is active."""

    __slots__ = ("key_id",)

    def __init__(self, key):
        super().__init__(
            owner_id=key.owner_id,
            mode=key.mode,
            scopes=key.scopes,
            display=f"key {key.prefix}",
            quota=f"key:{key.pk}",
        )
        self.key_id = key.pk

    @classmethod
    def from_request(cls, request, execution_id):
        key = key_from_request(request)
        if key is None:
            return None
        ratelimit.count(request, key)
        return cls(key)

    @classmethod
    def current_scopes(cls, grants):
        # One set per key, shared by its streams: a process may hold thousands of one key.
        held = {
            key_id: frozenset(scopes)
            for key_id, scopes in usable_key_scopes({grant.key_id for grant in grants}).items()
        }
        return {grant: held[grant.key_id] for grant in grants if grant.key_id in held}


class StreamTokenGrant(APIKeyGrant):
    """A stream opened with ``?token=``: the one execution the token names, read on
    behalf of the key that minted it, valid while that key is (``executions.tokens``)."""

    __slots__ = ()

    def __init__(self, key):
        super().__init__(key)
        self.display = f"stream token of key {key.prefix}"

    @classmethod
    def from_request(cls, request, execution_id):
        token = request.GET.get("token")
        if token is None:
            return None
        key_id = tokens.key_id_of(token, execution_id)
        key = key_with_owner(pk=key_id)
        if key is None:
            raise tokens.InvalidStreamToken
        usable(key)
        ratelimit.count(request, key)
        return cls(key)


class SessionGrant(BaseGrant):
    """A stream opened by a logged-in user of the site (same origin, its session cookie):
    the user's executions in both modes, or every execution for staff. Valid while the
    user is active, keeps its staff status, and has not changed its password (which
    ends its sessions, as Django's ``SessionAuthenticationMiddleware`` has it)."""

    __slots__ = ("is_staff", "session_hash", "user_id")

    def __init__(self, user, session_hash=None):
        super().__init__(
            owner_id=None if user.is_staff else user.pk,
            mode=None,
            scopes=STREAM_SCOPES,
            display=f"session of user {user.pk}",
            quota=f"user:{user.pk}",
        )
        self.user_id, self.is_staff, self.session_hash = user.pk, user.is_staff, session_hash

    @classmethod
    def for_user(cls, user):
        """Return what ``user`` sees through a session (for the live pages too)."""
        return cls(user)

    @classmethod
    def from_request(cls, request, execution_id):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_active:
            return None
        session = getattr(request, "session", None)
        return cls(user, session.get(HASH_SESSION_KEY) if session is not None else None)

    @classmethod
    def current_scopes(cls, grants):
        users = {
            user.pk: user
            for user in get_user_model()._default_manager.filter(
                pk__in={grant.user_id for grant in grants}, is_active=True
            )
        }
        # One HMAC per user, not per stream.
        hashes = {pk: user.get_session_auth_hash() for pk, user in users.items()}
        return {
            grant: SESSION_SCOPES
            for grant in grants
            if grant.user_id in users
            and cls.still_holds(grant, users[grant.user_id], hashes[grant.user_id])
        }

    @staticmethod
    def still_holds(grant, user, session_hash):
        """Whether ``grant`` still holds for ``user``, whose session hash is now
        ``session_hash``."""
        if user.is_staff != grant.is_staff:
            return False
        return grant.session_hash is None or constant_time_compare(grant.session_hash, session_hash)


@cache
def _import_kinds(paths):
    return tuple(import_string(path) for path in paths)


def grant_kinds():
    """Return the grant classes ``EXECUTIONS["STREAM_GRANTS"]`` names, in order."""
    return _import_kinds(tuple(get_config()["STREAM_GRANTS"]))


def grant_for_request(request, execution_id):
    """Return the grant of the first kind that finds its credential in the request; raise
    ``InvalidAPIKey`` when none does, or the ``APIError`` of a credential that is wrong."""
    for kind in grant_kinds():
        grant = kind.from_request(request, execution_id)
        if grant is not None:
            return grant
    raise InvalidAPIKey
