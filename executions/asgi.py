"""An ASGI application for sites that serve event streams."""

import asyncio
import contextlib
import gc

import django
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import Resolver404, get_resolver, set_script_prefix

from .conf import get_config
from .events import EventStreamResponse

# The cyclic GC's first threshold under tune_gc() (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def streams_events(view):
    """Mark an async view that answers with an ``EventStreamResponse``: the
    ``StreamingASGIHandler`` serves it without holding on to its request."""
    view.streams_events = True
    return view


class ResponseSent(Exception):
    """Ends the task group once the response is sent, which stops the disconnect listener."""


class StreamingASGIHandler(ASGIHandler):
    """Django's ASGI handler, for sites that hold thousands of event streams open.

    Django runs each request in its own thread-sensitive context, and the sync signal
    receivers and middleware hooks of even an async view start a thread in it that lives
    as long as the response: one OS thread per open event stream. Requests to async views
    skip that context, so their brief sync hooks share asgiref's one sync thread.

    A request to a view marked ``@streams_events`` also lets go of its request (headers,
    session, user, resolver match, the key's model instances) once the view has answered,
    since its stream may stay open for hours, and its frames go from the iterator to
    ``send`` with nothing in between.
    """

    async def __call__(self, scope, receive, send):
        view = self.view_of(scope) if scope["type"] == "http" else None
        if getattr(view, "streams_events", False):
            await self.handle_event_stream(scope, receive, send)
        elif iscoroutinefunction(view):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    @staticmethod
    def view_of(scope):
        """Return the view the request's path resolves to, or None."""
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        try:
            return get_resolver().resolve(path).func
        except Resolver404:
            return None

    async def handle_event_stream(self, scope, receive, send):
        """``handle()`` as Django 6.1 writes it, except that the request is dropped as soon
        as the view has answered: the stream is all that stays."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        try:
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.listen_for_disconnect(receive))
                    if request is not None:
                        response = await self.run_get_response(request)
                        if isinstance(response, EventStreamResponse):
                            release_request(request, response)
                        request = None
                    await self.send_response(response, send)
                    raise ResponseSent
            except* (ResponseSent, RequestAborted):
                pass
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            body_file.close()
        if response is None:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()

    async def send_response(self, response, send):
        if not isinstance(response, EventStreamResponse):
            return await super().send_response(response, send)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": asgi_headers(response),
            }
        )
        async with contextlib.aclosing(response.frames) as frames:
            async for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body"})


def release_request(request, response):
    """Free an event stream's request now, not when the stream ends or later.

    Django hands the request's ``close()`` to its response, which would keep the request
    alive as long as the stream, and middleware leaves reference cycles through it (the
    lazy user, the messages storage) that only a full collection would free. Once the
    view has answered nothing uses the request: close it and break the cycles.
    """
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):  # as HttpResponseBase.close() does
            closer()
    response._resource_closers.clear()
    request.__dict__.clear()


def asgi_headers(response):
    """Return the response's headers and cookies as ASGI encodes them, as Django's
    ``ASGIHandler.send_response()`` does."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    headers.extend(
        (b"Set-Cookie", cookie.OutputString().encode("ascii"))
        for cookie in response.cookies.values()
    )
    return headers


def tune_gc():
    """Keep the cyclic garbage collector from pausing the event loop every few seconds.

    Each open stream holds a pending future or two; with Python's default threshold,
    the frequent young collections promote them until a full collection runs, which
    walks every object in the process and stops all streams for 50 to 150 ms. Objects
    loaded at start-up are frozen out of collections and young collections are rarer.
    """
    get_resolver().url_patterns  # noqa: B018 (imports every view module before freezing)
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def get_asgi_application():
    """``django.core.asgi.get_asgi_application()``, serving event streams thread-free and
    with the garbage collector tuned for them (``EXECUTIONS["TUNE_GC"]``)."""
    django.setup(set_prefix=False)
    handler = StreamingASGIHandler()
    if get_config()["TUNE_GC"]:
        tune_gc()
    return handler
