"""The event stream through real ASGI servers (daphne, uvicorn) in their own processes, fed
by ``manage.py runworkflow`` in yet another process, over the real Redis or, with the
in-memory layer, by polling the log alone."""

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from functools import partial

import httpx
import pytest
import redis

from apikeys.asyncdb import run_in_short_session as db
from executions.models import Status
from executions.recorder import ExecutionRecorder
from tests.live_server import (
    CORE_LAYER,
    PUBSUB_LAYER,
    READ_TIMEOUT,
    LiveStream,
    Producer,
    events_url,
    expected_body,
    frames_of,
    group_members,
    ids_of,
    live_server,
    redis_server,
    without_keepalives,
)
from tests.runs import completed_run

pytestmark = pytest.mark.django_db(transaction=True)

KEEPALIVE = "0.3"
# How long a test waits for something that must happen; far above what it takes.
TIMEOUT = READ_TIMEOUT
# The threads a server may add however many streams it holds: the workers of its event
# loop's default executor (ThreadPoolExecutor's default size), where streams borrow a
# thread for each database read, and asgiref's one sync thread, with one to spare.
THREAD_ALLOWANCE = min(32, (os.cpu_count() or 1) + 4) + 2

SERVER_ENV = {
    # Only Redis brings events to these servers: a log poll every minute finds nothing
    # in time.
    "redis": {"EXECUTIONS_POLL_INTERVAL": "60"},
    # The in-memory layer cannot hear the producer's process: polling the log is all.
    "memory": {"CHANNEL_LAYER_BACKEND": "memory"},
}


def start_server(server, layer, **env):
    return live_server(
        server,
        EXECUTIONS_KEEPALIVE=KEEPALIVE,
        APIKEYS_RATE_LIMIT_KEY_PREFIX=f"test-rl:{uuid.uuid4().hex}",
        GZIP_MIDDLEWARE="1",
        **SERVER_ENV[layer],
        **env,
    )


@pytest.fixture(scope="module")
def daphne(django_db_setup):
    with start_server("daphne", "redis") as server:
        yield server


@pytest.fixture(scope="module")
def daphne_memory(django_db_setup):
    with start_server("daphne", "memory") as server:
        yield server


@pytest.fixture(scope="module")
def uvicorn(django_db_setup):
    with start_server("uvicorn", "redis") as server:
        yield server


SERVERS = {"daphne": "redis", "daphne_memory": "memory", "uvicorn": "redis"}


@pytest.fixture
def raw_key(make_key):
    return make_key()[1]


@contextlib.contextmanager
def open_stream(server, execution_id, raw, **headers):
    url = server.url + events_url(execution_id)
    headers = {"X-API-Key": raw, **headers}
    with httpx.stream("GET", url, headers=headers, timeout=TIMEOUT) as response:
        yield LiveStream(response)


def read_stream(server, execution_id, raw, *, until=None, **headers):
    """GET the stream and read it until the server ends it (or ``until(body)`` holds);
    return the response and the body."""
    with open_stream(server, execution_id, raw, **headers) as stream:
        stream.read_until(until)
    return stream.response, stream.body


def connected_status(body):
    """The ``status`` the stream's ``connected`` event reported."""
    data = frames_of(body)[1].split(b"\n")[1].removeprefix(b"data: ")
    return json.loads(data)["status"]


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_a_producer_in_another_process_reaches_the_stream(request, user, raw_key, server_name):
    server = request.getfixturevalue(server_name)
    producer = Producer(
        user.username, {"nodes": 3, "delay_ms": 150}, **SERVER_ENV[SERVERS[server_name]]
    )
    try:
        response, body = read_stream(server, producer.execution_id, raw_key)
        producer.wait()
    finally:
        producer.close()

    assert response.status_code == 200
    assert ids_of(body) == list(range(1, 12))
    assert frames_of(body)[-1].split(b"\n")[1] == b"event: execution:completed"
    status = connected_status(body)
    assert status in {Status.PENDING, Status.RUNNING, Status.COMPLETED}
    assert without_keepalives(body) == expected_body(producer.execution_id, status)


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_the_real_server_sends_the_stream_headers(request, user, raw_key, server_name):
    server = request.getfixturevalue(server_name)
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_live")
    recorder.start()
    response, body = read_stream(
        server, recorder.execution_id, raw_key, until=lambda body: ids_of(body) == [1]
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    uuid.UUID(response.headers["X-Request-ID"])
    assert "Content-Length" not in response.headers
    assert body == expected_body(recorder.execution_id, "running")


def test_the_real_server_does_not_gzip_the_stream(daphne, user, raw_key):
    missing = "exec_" + "x" * 200
    not_found = httpx.get(
        daphne.url + events_url(missing),
        headers={"X-API-Key": raw_key, "Accept-Encoding": "gzip"},
        timeout=TIMEOUT,
    )
    assert not_found.status_code == 404
    assert not_found.headers["Content-Encoding"] == "gzip"  # the middleware is in place
    assert not_found.json()["error"]["code"] == "resource_not_found"  # httpx decompressed it

    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_live")
    recorder.start()
    recorder.complete({"ok": True})
    response, body = read_stream(
        daphne, recorder.execution_id, raw_key, **{"Accept-Encoding": "gzip"}
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    assert "Content-Encoding" not in response.headers
    assert body == expected_body(recorder.execution_id, "completed")


def running_execution(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_live")
    recorder.start()
    return recorder.execution_id


async def open_streams(client, url, raw, count):
    """Open ``count`` streams at once; return them once each has delivered event 1."""

    async def open_one():
        request = client.build_request("GET", url, headers={"X-API-Key": raw})
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        body = b""
        async for chunk in response.aiter_raw():
            body += chunk
            if ids_of(body) == [1]:
                return response
        raise AssertionError(f"The stream ended first: {body!r}")

    return await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(count))), TIMEOUT)


async def wait_until(predicate):
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "Still waiting"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_clients_going_away_leave_neither_threads_nor_subscriptions(
    daphne, user, raw_key, redis_client
):
    execution_id = await db(running_execution, user)
    url = daphne.url + events_url(execution_id)

    def members():
        return group_members(redis_client, execution_id)

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
        for warm_up in await open_streams(client, url, raw_key, 2):
            await warm_up.aclose()
        await wait_until(lambda: members() == 0)
        before = daphne.thread_count()

        streams = await open_streams(client, url, raw_key, 30)
        during = daphne.thread_count()
        assert members() == 1  # one channel per process

        for stream in streams:
            await stream.aclose()
        await wait_until(lambda: members() == 0)
    after = daphne.thread_count()

    assert during - before <= THREAD_ALLOWANCE, (before, during)
    assert after - before <= THREAD_ALLOWANCE, (before, after)


def test_events_recorded_while_the_server_restarts_arrive_on_reconnect(user, raw_key):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_live", total_nodes=10)
    recorder.start()
    recorder.progress(completed_nodes=1)
    with start_server("daphne", "redis") as server:
        with open_stream(server, recorder.execution_id, raw_key) as first:
            first.read_until(lambda body: ids_of(body) == [1, 2])
            recorder.progress(completed_nodes=2)
            first.read_until(lambda body: ids_of(body) == [1, 2, 3])
            server.stop()
        recorder.progress(completed_nodes=3)
        recorder.progress(completed_nodes=4)
        server.start()

        with open_stream(
            server, recorder.execution_id, raw_key, **{"Last-Event-ID": "3"}
        ) as second:
            second.read_until(lambda body: ids_of(body) == [4, 5])
            recorder.progress(completed_nodes=5)
            recorder.complete({"done": True})
            second.read_until()

    assert ids_of(first.body) + ids_of(second.body) == list(range(1, 8))
    assert without_keepalives(second.body) == expected_body(recorder.execution_id, "running", 3)


def wait_for(predicate):
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "Still waiting"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("backend", "server_layer"),
    [(PUBSUB_LAYER, "pubsub"), (CORE_LAYER, "core")],
    ids=["pubsub-layer", "core-layer"],
)
def test_events_recorded_while_redis_restarts_reach_the_open_stream(
    user, raw_key, settings, backend, server_layer
):
    with redis_server() as own_redis:
        # This process records the events; the server streams them; both on that Redis.
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": backend,
                "CONFIG": {"hosts": [{"address": own_redis.url}], "prefix": "asgi"},
            }
        }
        client = redis.Redis.from_url(own_redis.url)
        recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_live")
        recorder.start()
        members = partial(group_members, client, recorder.execution_id)
        with (
            start_server(
                "daphne", "redis", REDIS_URL=own_redis.url, CHANNEL_LAYER_BACKEND=server_layer
            ) as server,
            open_stream(server, recorder.execution_id, raw_key) as stream,
        ):
            stream.read_until(lambda body: ids_of(body) == [1])
            wait_for(lambda: members() == 1)
            recorder.progress(completed_nodes=1, total_nodes=5)
            stream.read_until(lambda body: ids_of(body) == [1, 2])

            own_redis.stop()
            recorder.progress(completed_nodes=2, total_nodes=5)  # sent nowhere: logged only
            recorder.progress(completed_nodes=3, total_nodes=5)
            own_redis.start()
            wait_for(lambda: members() == 1)  # the server re-subscribed or re-joined

            recorder.progress(completed_nodes=4, total_nodes=5)
            recorder.complete({"done": True})
            stream.read_until()
        client.close()
    assert ids_of(stream.body) == [1, 2, 3, 4, 5, 6]
    assert without_keepalives(stream.body) == expected_body(recorder.execution_id, "running")


@pytest.mark.django_db(transaction=True)
def test_a_producer_stopped_by_sigterm_records_that_its_run_failed(user):
    producer = Producer(user.username, {"nodes": 3, "delay_ms": 5000})
    try:
        recorder = ExecutionRecorder(producer.execution_id)
        deadline = time.monotonic() + 30
        while not recorder.execution.nodes.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        producer.process.send_signal(signal.SIGTERM)
        _, stderr = producer.process.communicate(timeout=30)
    finally:
        producer.close()
    execution = recorder.execution
    assert producer.process.returncode == 1
    assert f"Interrupted: {execution.id} is recorded as failed." in stderr
    assert (execution.status, execution.error) == (
        "failed",
        "The worker stopped during the run (KeyboardInterrupt).",
    )
    assert list(execution.nodes.values_list("status", flat=True)) == ["failed"]


# Browser access through the demo site's own server process.


@pytest.fixture
def demo_server():
    with live_server(
        "demo-daphne",
        LOG_LEVEL="INFO",
        CORS_ALLOWED_ORIGINS="http://127.0.0.1:9",
        APIKEYS_RATE_LIMIT_KEY_PREFIX=f"test-rl:{uuid.uuid4().hex}",
    ) as server:
        yield server


def test_the_demo_servers_print_no_stream_token(demo_server, user, raw_key):
    execution_id = completed_run(user)
    response = httpx.post(
        f"{demo_server.url}/api/v1/executions/{execution_id}/stream-token",
        headers={"X-API-Key": raw_key},
    )
    token = response.json()["data"]["token"]
    streamed = httpx.get(f"{demo_server.url}{events_url(execution_id)}?token={token}")
    assert streamed.status_code == 200
    refused = httpx.get(f"{demo_server.url}{events_url('exec_other')}?token={token}")
    assert refused.json()["error"]["code"] == "invalid_stream_token"
    demo_server.stop()
    log = demo_server.log()
    assert f'"GET {events_url(execution_id)}" 200' in log  # the access log is on
    assert token not in log
    assert "token=" not in log


def test_an_allowed_origin_may_call_the_api_and_stream_with_a_token(demo_server, user, raw_key):
    origin = {"Origin": "http://127.0.0.1:9"}
    execution_id = completed_run(user)
    preflight = httpx.options(
        f"{demo_server.url}/api/v1/executions/{execution_id}/stream-token",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == origin["Origin"]
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"]
    minted = httpx.post(
        f"{demo_server.url}/api/v1/executions/{execution_id}/stream-token",
        headers={**origin, "X-API-Key": raw_key},
    )
    assert minted.headers["Access-Control-Allow-Origin"] == origin["Origin"]
    assert "X-Request-ID" in minted.headers["Access-Control-Expose-Headers"]
    streamed = httpx.get(minted.json()["data"]["url"], headers=origin)
    assert streamed.status_code == 200
    assert streamed.headers["Access-Control-Allow-Origin"] == origin["Origin"]
    refused = httpx.get(f"{demo_server.url}{events_url(execution_id)}", headers=origin)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == origin["Origin"]
    other = httpx.get(
        f"{demo_server.url}{events_url(execution_id)}", headers={"Origin": "http://evil.test"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


# Stopping a server process.


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_sigterm_ends_a_servers_open_streams_at_once_and_the_server_exits(server, user, raw_key):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_shutdown")
    recorder.start()
    with live_server(server, EXECUTIONS_KEEPALIVE="5") as process:
        streams = [open_stream(process, recorder.execution_id, raw_key) for _ in range(20)]
        readers = [context.__enter__() for context in streams]
        for reader in readers:
            reader.read_until(lambda body: ids_of(body) == [1])
        process.process.send_signal(signal.SIGTERM)
        for reader in readers:
            body = reader.read_until()  # the server ends each response cleanly
            assert ids_of(body) == [1]
        # Without the streams ended, a graceful server waits for them for as long as
        # they last.
        process.process.wait(10)
        for context in streams:
            context.__exit__(None, None, None)
