"""What opens an event stream, and how an open stream tells that it still may read.

A request to the stream is let in by a *grant*. The kinds of grant a site accepts are
listed in ``EXECUTIONS["STREAM_GRANTS"]``; the stream asks each kind in turn, and the
first that finds its credential in the request opens the stream. While it is open, the
fan-out's ticker asks each kind, once per tick and in one query for all of its open
streams, which of their grants still hold, and ends the streams of those that do not.

A new kind subclasses ``BaseGrant`` and is added to the setting; nothing else changes.
"""

from functools import cache

from django.utils.module_loading import import_string

from apikeys import ratelimit
from apikeys.auth import key_from_request, usable_key_scopes
from apikeys.exceptions import InvalidAPIKey

from .conf import get_config


class BaseGrant:
    """What an open stream may read.

    - ``owner_id``: the user whose executions it sees; None for every owner (staff).
    - ``mode``: ``"live"`` or ``"test"``, the mode of the executions it sees; None for both.
    - ``scopes``: the scopes it holds, a tuple in the order they were granted.
    - ``display``: names it in logs, never with a secret (a key's prefix, a user's id).

    Grants compare by identity: each open stream holds its own.
    """

    __slots__ = ("display", "mode", "owner_id", "scopes")

    def __init__(self, *, owner_id, mode, scopes, display):
        self.owner_id, self.mode = owner_id, mode
        self.scopes, self.display = tuple(scopes), display

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
            owner_id=key.owner_id, mode=key.mode, scopes=key.scopes, display=f"key {key.prefix}"
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
        held = usable_key_scopes({grant.key_id for grant in grants})
        return {grant: frozenset(held[grant.key_id]) for grant in grants if grant.key_id in held}


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
