"""The streams' database work, by kind, each on threads of its own
(``EXECUTIONS["DATABASE_THREADS"]``)."""

from functools import cache

from apikeys.asyncdb import ShortSessions

from .conf import get_config


@cache
def _sessions(kind, size):
    return ShortSessions(kind, size)


async def run(kind, func, *args):
    """Run ``func(*args)`` in a short database session on the threads of ``kind``
    (``"open"``, ``"log"`` or ``"check"``)."""
    size = get_config()["DATABASE_THREADS"][kind]
    return await _sessions(kind, size).run(func, *args)
