"""``executions.asgi``: the handler that serves event streams, driven as an ASGI server
drives it (scope, receive, send), and its garbage-collector tuning.

Like ``test_stream.py``, the stream reads the database on pool threads, so every test
commits its data and does its own database work through ``run_in_short_session``.
"""

import ast
import asyncio
import contextlib
import gc
import hashlib
import inspect
import json
import textwrap
import threading
import weakref

import django
import pytest
from asgiref.sync import SyncToAsync
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.urls import get_resolver
from django.urls.resolvers import URLResolver
from django.utils.decorators import async_only_middleware

from apikeys.asyncdb import run_in_short_session as db
from executions import asgi
from executions.asgi import GC_YOUNG_THRESHOLD, StreamingASGIHandler, tune_gc
from executions.fanout import get_hub
from tests.hub import eventually, hub_is_idle
from tests.live_server import events_url, expected_body, ids_of
from tests.runs import completed_run, running
from tests.streams import Exchange
from tests.views import Gate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def own_channel_layer(settings):
    """A channel layer of the test's own: each test runs its own event loop."""
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}


@pytest.fixture
def handler():
    return StreamingASGIHandler()


@pytest.fixture
def key_header(make_key):
    return (b"x-api-key", make_key(scopes=["executions:read", "workflows:read"])[1].encode())


@contextlib.contextmanager
def signals_sent(*watched):
    """Record each of the ``watched`` signals sent meanwhile, as ``(signal, sender, name of
    the thread that sent it)``."""
    sent = []

    def receiver(signal, sender, **kwargs):
        sent.append((signal, sender, threading.current_thread().name))

    for signal in watched:
        signal.connect(receiver)
    try:
        yield sent
    finally:
        for signal in watched:
            signal.disconnect(receiver)


async def open_running_stream(handler, user, key_header):
    """Record a running execution and open its stream; return ``(recorder, exchange)``
    once the stream has sent ``execution:started``."""
    recorder = await db(running, user)
    exchange = Exchange(handler, events_url(recorder.execution_id), [key_header])
    await exchange.wait_for(lambda e: ids_of(e.body) == [1])
    return recorder, exchange


@pytest.mark.asyncio
async def test_the_handler_sends_the_contracts_headers_and_frames_then_ends(
    handler, user, key_header
):
    execution_id = await db(completed_run, user)
    exchange = await Exchange(handler, events_url(execution_id), [key_header]).finished()
    assert exchange.start["status"] == 200
    headers = dict(exchange.start["headers"])
    assert headers[b"Content-Type"] == b"text/event-stream"
    assert headers[b"Cache-Control"] == b"no-cache"
    assert headers[b"X-Accel-Buffering"] == b"no"
    assert headers[b"X-Request-ID"]
    assert exchange.body == await db(expected_body, execution_id, "completed")
    assert exchange.complete


@pytest.mark.asyncio
async def test_errors_before_the_stream_are_json_envelopes(handler, user, key_header):
    missing = await Exchange(handler, events_url("exec_missing"), [key_header]).finished()
    assert missing.start["status"] == 404
    assert json.loads(missing.body)["error"]["code"] == "resource_not_found"
    execution_id = await db(completed_run, user)
    no_key = await Exchange(handler, events_url(execution_id)).finished()
    assert no_key.start["status"] == 401
    assert json.loads(no_key.body)["error"]["code"] == "invalid_api_key"
    bad_id = await Exchange(
        handler, events_url(execution_id), [key_header], query=b"last_event_id=x"
    ).finished()
    assert bad_id.start["status"] == 400
    assert json.loads(bad_id.body)["error"]["code"] == "validation_error"


SEEN_REQUESTS = []


@async_only_middleware
def remember_requests(get_response):
    """Middleware that keeps a weak reference to every request it sees."""

    async def middleware(request):
        SEEN_REQUESTS.append(weakref.ref(request))
        return await get_response(request)

    return middleware


@pytest.mark.asyncio
async def test_an_open_stream_frees_its_request_at_once(user, key_header, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_asgi.remember_requests"]
    SEEN_REQUESTS.clear()
    recorder, exchange = await open_running_stream(StreamingASGIHandler(), user, key_header)
    # Freed, not merely unreachable: no garbage collection needed.
    assert [ref() for ref in SEEN_REQUESTS] == [None]
    await db(recorder.complete)
    await exchange.finished()
    assert ids_of(exchange.body) == [1, 2]


@pytest.mark.asyncio
async def test_request_finished_is_sent_once_when_the_stream_ends(
    handler, user, key_header, settings
):
    with signals_sent(signals.request_finished) as finished:
        recorder, exchange = await open_running_stream(handler, user, key_header)
        assert finished == []
        await db(recorder.complete)
        await exchange.finished()
    assert [sender for _, sender, _ in finished] == [StreamingASGIHandler]


@pytest.mark.asyncio
async def test_request_started_is_sent_once_on_the_thread_that_opens_the_stream(
    handler, user, key_header
):
    execution_id = await db(completed_run, user)
    with signals_sent(signals.request_started) as started:
        await Exchange(handler, events_url(execution_id), [key_header]).finished()
        no_key = await Exchange(handler, events_url(execution_id)).finished()
    assert no_key.start["status"] == 401
    assert [sender for _, sender, _ in started] == [StreamingASGIHandler] * 2
    assert all(thread.startswith("db-open") for _, _, thread in started)


@pytest.mark.asyncio
async def test_a_client_that_disconnects_leaves_no_subscription_or_task_behind(
    handler, user, key_header
):
    recorder, exchange = await open_running_stream(handler, user, key_header)
    assert list(get_hub().topics) == [recorder.execution_id]
    await exchange.disconnect()
    assert not exchange.complete
    await eventually(hub_is_idle)
    await eventually(
        lambda: not [t for t in asyncio.all_tasks() if t.get_name().startswith("executions-")]
    )


@pytest.mark.asyncio
async def test_a_stream_cancelled_by_the_server_ends_cancelled_and_lets_go(
    handler, user, key_header
):
    _, exchange = await open_running_stream(handler, user, key_header)
    exchange.task.cancel()  # not the client leaving: the handler must not swallow it
    with pytest.raises(asyncio.CancelledError):
        await exchange.task
    await eventually(hub_is_idle)


@pytest.mark.asyncio
async def test_an_open_stream_keeps_no_headers_once_they_are_sent(handler, user, key_header):
    recorder, exchange = await open_running_stream(handler, user, key_header)
    assert len(exchange.start["headers"]) > 5
    gc.collect()  # the responses of earlier tests' streams
    (response,) = [
        o for o in gc.get_objects() if isinstance(o, asgi.EventStreamResponse) and not o.closed
    ]
    assert dict(response.items()) == {}
    await db(recorder.complete)
    await exchange.finished()
    assert ids_of(exchange.body) == [1, 2]


@pytest.mark.asyncio
async def test_other_views_are_served_through_the_sites_middleware_and_view(
    handler, user, key_header
):
    exchange = await Exchange(handler, "/api/v1/workflows", [key_header]).finished()
    assert exchange.start["status"] == 200
    assert json.loads(exchange.body)["data"][0]["id"] == "wf_demo"


@pytest.mark.asyncio
async def test_a_sync_views_middleware_and_view_run_in_one_trip_to_its_thread(
    handler, key_header, monkeypatch
):
    call, trips = SyncToAsync.__call__, []

    def counting_call(self, *args, **kwargs):
        trips.append(getattr(self.func, "__qualname__", repr(self.func)))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting_call)
    exchange = await Exchange(handler, "/api/v1/workflows", [key_header]).finished()
    assert exchange.start["status"] == 200
    # request_started, the middleware and view, and the response's close(): one trip.
    assert trips == ["StreamingASGIHandler.respond"]


@pytest.mark.asyncio
async def test_a_sync_view_sends_request_started_and_finished_once_on_its_thread(handler):
    with signals_sent(signals.request_started, signals.request_finished) as sent:
        exchange = await Exchange(handler, "/api/v1/workflows").finished()
    assert exchange.start["status"] == 401
    assert [signal for signal, _, _ in sent] == [signals.request_started, signals.request_finished]
    [thread] = {thread for _, _, thread in sent}  # the request's, not the event loop's
    assert thread != threading.current_thread().name


@pytest.mark.asyncio
async def test_a_client_that_leaves_a_sync_view_gets_its_request_finished_once(handler):
    Gate.entered.clear()
    Gate.opened.clear()
    try:
        with signals_sent(signals.request_finished) as finished:
            exchange = Exchange(handler, "/test-only/gated")
            await asyncio.to_thread(Gate.entered.wait, 10)
            await exchange.disconnect()  # the handler returns; the view goes on in its thread
            assert exchange.messages == []
            Gate.opened.set()
            await eventually(lambda: finished)
            await asyncio.sleep(0.1)  # any second request_finished
    finally:
        Gate.opened.set()
    assert [sender for _, sender, _ in finished] == [StreamingASGIHandler]


ASYNC_ONLY_SEEN = []


@async_only_middleware
def note_async_only(get_response):
    """A host's middleware that runs only as a coroutine."""

    async def middleware(request):
        ASYNC_ONLY_SEEN.append(request.path)
        response = await get_response(request)
        response["X-Async-Only"] = "1"
        return response

    return middleware


@pytest.mark.asyncio
async def test_an_async_only_middleware_still_wraps_a_sync_view(settings, key_header):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_asgi.note_async_only"]
    exchange = await Exchange(StreamingASGIHandler(), "/api/v1/workflows", [key_header]).finished()
    assert exchange.start["status"] == 200
    assert dict(exchange.start["headers"])[b"X-Async-Only"] == b"1"
    assert ASYNC_ONLY_SEEN == ["/api/v1/workflows"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("opted_in", "in_context"), [(False, True), (True, False)])
async def test_async_views_keep_djangos_thread_context_unless_the_site_opts_out(
    handler, settings, opted_in, in_context
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "THREAD_FREE_ASYNC_VIEWS": opted_in}
    exchange = await Exchange(handler, "/test-only/async/context").finished()
    assert json.loads(exchange.body) == {"thread_sensitive_context": in_context}


@pytest.mark.asyncio
# "/nowhere/" ends in a slash: CommonMiddleware resolves a 404's path again for APPEND_SLASH.
@pytest.mark.parametrize("path", ["/api/v1/workflows", "/test-only/async/context", "/nowhere/"])
async def test_the_handler_resolves_each_path_once(handler, key_header, monkeypatch, path):
    root = get_resolver()
    resolve, resolved = URLResolver.resolve, []

    def counting_resolve(resolver, path):
        if resolver is root:
            resolved.append(path)
        return resolve(resolver, path)

    monkeypatch.setattr(URLResolver, "resolve", counting_resolve)
    await Exchange(handler, path, [key_header]).finished()
    assert resolved == [path]


@pytest.mark.asyncio
async def test_a_middleware_that_sets_request_urlconf_decides_the_view(handler, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.views.AlternateURLconfMiddleware"]
    handler = StreamingASGIHandler()
    headers = [(b"x-alternate-urlconf", b"1")]
    exchange = await Exchange(handler, "/api/v1/workflows", headers).finished()
    assert json.loads(exchange.body) == {"urlconf": "alternate"}


@pytest.mark.asyncio
async def test_a_stream_under_a_script_prefix_is_served(handler, user, key_header):
    execution_id = await db(completed_run, user)
    path = "/site" + events_url(execution_id)
    exchange = await Exchange(handler, path, [key_header], root_path="/site").finished()
    assert exchange.start["status"] == 200
    assert exchange.body == await db(expected_body, execution_id, "completed")


# Digests of Django's ASGIHandler.handle() (its code, without docstring or comments), which
# StreamingASGIHandler.handle() follows. A Django whose handle() differs fails
# here until someone has read its handle() against ours and recorded it.
DJANGO_HANDLE_DIGESTS = {
    "5.2": "757c338bcbdd6d351105a29b08cfa8edd1510f2c2def4070dca78801e5481875",
    "6.0": "757c338bcbdd6d351105a29b08cfa8edd1510f2c2def4070dca78801e5481875",
    "6.1": "9dcabbfa96e9cfca973faefee748e4b151dbee9bcc0fcd9dbbe7f1d57ec0e86a",
}


def code_digest(function):
    [definition] = ast.parse(textwrap.dedent(inspect.getsource(function))).body
    if isinstance(definition.body[0], ast.Expr) and isinstance(
        definition.body[0].value, ast.Constant
    ):
        definition.body = definition.body[1:]
    return hashlib.sha256(ast.unparse(definition).encode()).hexdigest()


def test_djangos_handle_is_the_one_the_streaming_handler_was_written_against():
    version = ".".join(map(str, django.VERSION[:2]))
    assert version in DJANGO_HANDLE_DIGESTS, f"Django {version}: review our handle()"
    assert code_digest(ASGIHandler.handle) == DJANGO_HANDLE_DIGESTS[version], (
        f"Django {django.get_version()} changed ASGIHandler.handle(): compare it with "
        "StreamingASGIHandler.handle(), then record its digest here."
    )


def test_tune_gc_freezes_start_up_objects_and_makes_young_collections_rarer():
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_get_asgi_application_leaves_the_gc_alone_when_told_to(settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "TUNE_GC": False}
    threshold = gc.get_threshold()
    assert isinstance(asgi.get_asgi_application(), StreamingASGIHandler)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/api/v1/workflows", "/api/v1/executions/exec_x/events"])
async def test_a_host_the_site_does_not_serve_gets_the_apis_envelope_not_a_page(handler, path):
    exchange = Exchange(handler, path, [(b"host", b"evil.example")])
    exchange = await exchange.finished()
    assert exchange.start["status"] == 400
    headers = dict(exchange.start["headers"])
    assert headers[b"Content-Type"] == b"application/json"
    body = json.loads(exchange.body)
    assert body["error"]["code"] == "validation_error"
    assert headers[b"X-Request-ID"].decode() == body["meta"]["request_id"]


@pytest.mark.asyncio
async def test_a_host_the_site_does_not_serve_gets_the_sites_own_answer_elsewhere(handler):
    exchange = await Exchange(handler, "/admin/", [(b"host", b"evil.example")]).finished()
    assert exchange.start["status"] == 400
    assert dict(exchange.start["headers"])[b"Content-Type"].startswith(b"text/html")
