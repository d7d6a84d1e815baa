"""Blocking ORM work for async views, without tying a thread or a connection to the request."""

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import connections


def in_short_session(func, *args, **kwargs):
    """Run ``func`` and close the thread's database connections after (with a connection
    pool, they go back to it)."""
    try:
        return func(*args, **kwargs)
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()


async def run_in_short_session(func, *args, **kwargs):
    """``in_short_session()`` in the shared worker pool.

    Django's async ORM runs on a thread owned by the request and keeps its connection
    open for the request's life; an event stream lives for minutes, so it borrows a pool
    thread and a connection only for as long as each read takes.
    """
    return await sync_to_async(in_short_session, thread_sensitive=False)(func, *args, **kwargs)


class ShortSessions:
    """``run_in_short_session()`` on threads of its own, at most ``size`` at once: work of
    one kind waits for its own threads only, however slow another kind's queries are."""

    def __init__(self, name, size):
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"db-{name}")

    async def run(self, func, *args, **kwargs):
        run = sync_to_async(in_short_session, thread_sensitive=False, executor=self.executor)
        return await run(func, *args, **kwargs)
