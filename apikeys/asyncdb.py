"""Blocking ORM work for async views, without tying a thread or a connection to the request."""

from asgiref.sync import sync_to_async
from django.db import connections


def _in_short_session(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()


async def run_in_short_session(func, *args, **kwargs):
    """Run ``func`` in the shared worker pool and close its database connections after.

    Django's async ORM runs on a thread owned by the request and keeps its connection
    open for the request's life; an event stream lives for minutes, so it borrows a pool
    thread and a fresh connection only for as long as each read takes.
    """
    return await sync_to_async(_in_short_session, thread_sensitive=False)(func, args, kwargs)
