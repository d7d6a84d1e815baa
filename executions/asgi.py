"""An ASGI application for sites that serve event streams."""

import asyncio
import contextlib
import gc
import inspect
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core import signals
from django.core.exceptions import DisallowedHost, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, StreamingHttpResponse
from django.http.response import ResponseHeaders
from django.urls import Resolver404, get_resolver, set_script_prefix

from apikeys.exceptions import ValidationError
from apikeys.middleware import APIMiddleware
from apikeys.responses import error_response as error_response_for

from . import sessions
from .conf import get_config

# The cyclic GC's first threshold under tune_gc() (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000
# Where __call__ leaves its resolution of the path for resolve_request() to reuse.
RESOLVED = "executions.resolver_match"


class EventStreamResponse(StreamingHttpResponse):
    """A ``text/event-stream`` response over an async iterator of frames (bytes), neither
    cached nor buffered by proxies; ``on_close()`` runs when the server is done with it,
    whether the frames were read or not (the handlers call ``close()`` in a thread)."""

    def __init__(self, frames, on_close=None):
        super().__init__(frames, content_type="text/event-stream")
        self.frames, self.on_close = frames, on_close
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"

    def head(self):
        """Return the ASGI ``http.response.start`` message, and let go of the headers and
        cookies: the response lives as long as its stream, and they were most of its memory."""
        message = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": asgi_headers(self),
        }
        self.headers = ResponseHeaders({})
        self.cookies.clear()
        return message

    def __aiter__(self):
        # The frames are bytes already: Django's mapping through make_bytes() is skipped.
        return aiter(self.frames)

    def close(self):
        super().close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def streams_events(view):
    """Mark a view that answers with an ``EventStreamResponse``: the
    ``StreamingASGIHandler`` serves it without holding on to its request (or a thread)."""
    view.streams_events = True
    return view


class DisconnectWatch:
    """Cancel the task that serves a request, its body read, when the client disconnects:
    what Django's task group and listener do for ``handle()``, in a third of the memory
    an open stream would hold for them.

    ``stop()`` ends the watch before the task awaits anything else, so the cancellation
    only ever lands where the watch was on.
    """

    __slots__ = ("left", "receiving", "served")

    def __init__(self, receive):
        self.served, self.left = asyncio.current_task(), False
        # After the body, the only message ASGI may send is http.disconnect.
        self.receiving = asyncio.ensure_future(receive())
        self.receiving.add_done_callback(self.client_left)

    def client_left(self, receiving):
        if receiving.cancelled():
            return
        receiving.exception()  # retrieved: a failed receive() is a lost client too
        if self.served is not None:
            self.left = True
            self.served.cancel()

    def stop(self):
        """Stop watching; return whether the client left (and the task was cancelled)."""
        self.served = None
        self.receiving.cancel()
        return self.left


# asgiref 3.11+ lets a ThreadSensitiveContext run on an executor it is given.
POOLED_REQUEST_THREADS = "executor" in inspect.signature(ThreadSensitiveContext).parameters


class RequestThreads:
    """Single-thread executors for requests' sync code, each serving one request at a
    time, kept for the next requests (up to ``keep`` idle ones)."""

    def __init__(self, keep=32):
        self.keep, self.idle = keep, []

    @contextlib.asynccontextmanager
    async def context(self):
        """A ``ThreadSensitiveContext`` for one request: its sync code on a thread of its
        own, but one that served an earlier request, not a new one for each (a thread's
        start and end were a sixth of a REST request's time). asgiref before 3.11 cannot
        run a context on a given executor: there, Django's new thread."""
        if not POOLED_REQUEST_THREADS:
            async with ThreadSensitiveContext():
                yield
            return
        executor = self.idle.pop() if self.idle else self.new_executor()
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield
        finally:
            if len(self.idle) < self.keep:
                self.idle.append(executor)
            else:
                executor.shutdown(wait=False)

    @staticmethod
    def new_executor():
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")


class OneThreadChain(BaseHandler):
    """The site's middleware and a sync view as WSGI runs them: every hook and the view
    in one call, on one thread, for ``StreamingASGIHandler``.

    Under ASGI, Django runs each sync middleware hook through ``sync_to_async`` on its
    own: a dozen trips between the event loop and the request's thread for one REST
    request, which cost three times what the request's own work did (0.6 ms for a 401
    run as WSGI runs it, 3.5 ms in the async chain).
    """

    def __init__(self, handler):
        self.handler = handler
        self.load_middleware(is_async=False)

    def resolve_request(self, request):
        return self.handler.resolve_request(request)


class StreamingASGIHandler(ASGIHandler):
    """Django's ASGI handler, for sites that hold thousands of event streams open.

    Django runs each request in its own thread-sensitive context, and the sync signal
    receivers and middleware hooks of even an async view start a thread in it that lives
    as long as the response: one OS thread per open event stream. Requests to views
    marked ``@streams_events`` skip that context: a sync one runs with the site's
    middleware in one trip to a thread that opens streams
    (``EXECUTIONS["DATABASE_THREADS"]["open"]``), in one short database session; an
    async one's brief sync hooks share asgiref's one sync thread. They also let go of
    their request (headers, session, user, resolver match, model instances) once the view
    has answered, since a stream may stay open for hours, and their frames go from the
    iterator to ``send`` with nothing in between. ``EXECUTIONS["THREAD_FREE_ASYNC_VIEWS"]``
    has every async view skip the context too (its sync hooks then wait on each other's
    requests).

    A request to a sync view (the REST API's, the admin's, the pages') runs as under WSGI:
    ``request_started``, its middleware and view (``OneThreadChain``) and, once the
    response holds its content, the response's ``close()`` (``request_finished``), in one
    trip to its thread; Django's handler takes a trip for each signal and for each
    middleware hook.

    Which view a request goes to is decided on the root URLconf, before any middleware
    runs; that resolution serves the request unless a middleware sets ``request.urlconf``.
    """

    def __init__(self):
        super().__init__()
        self.request_threads = RequestThreads()
        self.one_thread_chain = OneThreadChain(self)
        self.closing = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # which refuses it
            return
        view = self.resolve_scope(scope)
        if getattr(view, "streams_events", False) or (
            iscoroutinefunction(view) and get_config()["THREAD_FREE_ASYNC_VIEWS"]
        ):
            await self.handle(scope, receive, send)
        else:
            async with self.request_threads.context():
                await self.handle(scope, receive, send)

    @staticmethod
    def resolve_scope(scope):
        """Resolve the request's path on the root URLconf; keep the outcome in the scope
        for ``resolve_request()`` and return the view, or None."""
        path = scope["path"]
        script_name = get_script_prefix(scope)
        if script_name:
            path = path.removeprefix(script_name.rstrip("/"))
        try:
            outcome = get_resolver().resolve(path)
        except Resolver404 as not_found:
            outcome = not_found
        scope[RESOLVED] = (path, outcome)
        return resolved_view(scope)

    async def handle(self, scope, receive, send):
        """``ASGIHandler.handle()`` as Django 6.1 writes it, except that a sync view's
        request runs in one trip to its thread (``respond_on_thread()``), and that an event
        stream's request and body are dropped as soon as the view has answered, and its
        response's head once it is sent: the stream is all that stays."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, response = self.create_request(scope, body_file)
        on_thread = request is not None and not iscoroutinefunction(resolved_view(scope))
        if not on_thread:
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        watch = DisconnectWatch(receive)
        try:
            if on_thread:
                response = await self.respond_on_thread(request)
            elif request is not None:
                response = await self.run_get_response(request)
            if not isinstance(response, EventStreamResponse):
                await self.send_response(response, send)
            else:
                release_request(request, response)
                body_file.close()
                request = body_file = None
                # Sent here, not in send_response(): an open stream holds one coroutine less.
                await send(response.head())
                frames = response.frames
                try:
                    while (frame := await anext(frames, None)) is not None:
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
                finally:
                    await frames.aclose()
                await send({"type": "http.response.body"})
        except asyncio.CancelledError:
            # The client left (Django's RequestAborted) unless another cancelled it too.
            if not watch.stop() or asyncio.current_task().uncancel() > 0:
                raise
        finally:
            watch.stop()
            if body_file is not None:
                body_file.close()
        if response is not None and not response.closed:
            await sync_to_async(response.close)()
        elif response is None and not on_thread:  # the client left an async view
            await signals.request_finished.asend(sender=self.__class__)
        # else close_unsent() closes the response when the thread has it

    async def respond_on_thread(self, request):
        """Run ``respond()`` on the request's thread, an event stream's on the threads that
        open streams, in one short database session. A response that comes after its
        client left is closed, so that what it holds (a stream slot, a file) is let go."""
        if getattr(resolved_view(request.scope), "streams_events", False):
            responding = sessions.run("open", self.respond, request)
        else:
            responding = sync_to_async(self.respond)(request)
        responding = asyncio.ensure_future(responding)
        try:
            return await asyncio.shield(responding)
        except asyncio.CancelledError:
            responding.add_done_callback(self.close_unsent)
            raise

    def respond(self, request):
        """Send ``request_started``, run the middleware and the view and, if the response
        holds its content, close it (``request_finished``): the work WSGI does on the
        request's thread, where Django's ASGI handler sends each signal from the event loop
        and its sync receivers cost a trip to a thread each (a tenth of a request).
        ``request_finished`` thus comes before the content is sent, as it does under WSGI
        for a server that closes the response once it has it."""
        signals.request_started.send(sender=self.__class__, scope=request.scope)
        response = self.one_thread_chain.get_response(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming:
            response.close()
        return response

    def close_unsent(self, responding):
        """Close the response ``responding`` returned, if it returned one not closed."""
        if responding.cancelled() or responding.exception() is not None:
            return
        response = responding.result()
        if not response.closed:
            closing = asyncio.ensure_future(sync_to_async(response.close)())
            self.closing.add(closing)  # a task the loop holds weakly
            closing.add_done_callback(self.closing.discard)

    def create_request(self, scope, body_file):
        """``ASGIHandler.create_request()``, except that a request to this app's API whose
        ``Host`` the site does not allow is answered in the API's JSON envelope, not with
        the site's HTML 400 page."""
        request, error_response = super().create_request(scope, body_file)
        if request is not None and self.is_api_request(scope):
            try:
                request.get_host()
            except DisallowedHost:
                error = ValidationError(
                    "The request's Host header is not one this site serves.",
                    details={"field": "Host"},
                )
                APIMiddleware.process_request(request)
                response = error_response_for(request, error)
                return None, APIMiddleware.process_response(request, response)
        return request, error_response

    @staticmethod
    def is_api_request(scope):
        """Whether the path resolved to a view of this app's API URLconf."""
        return "executions" in getattr(resolution(scope), "app_names", ())

    def resolve_request(self, request):
        """``BaseHandler.resolve_request()``, reusing ``__call__``'s resolution unless a
        middleware chose another URLconf for the request."""
        path, outcome = request.scope.pop(RESOLVED, (None, None))
        if path != request.path_info or hasattr(request, "urlconf"):
            return super().resolve_request(request)
        if isinstance(outcome, Resolver404):
            raise outcome
        request.resolver_match = outcome
        return outcome


def resolution(scope):
    """``resolve_scope()``'s outcome: a ``ResolverMatch``, a ``Resolver404``, or None."""
    _, outcome = scope.get(RESOLVED, (None, None))
    return outcome


def resolved_view(scope):
    """The view ``resolve_scope()`` found for the request, or None (no view matched)."""
    return getattr(resolution(scope), "func", None)


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
