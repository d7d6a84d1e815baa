"""``GET /api/v1/executions/:id/events`` in process, through Django's ``AsyncClient``: the
contract's frames byte for byte, resuming, errors before the stream, keepalives, key
revocation, live delivery, gap filling and cleanup on disconnect.

The stream reads the database on pool threads, outside any test transaction, so every
test commits its data (``transaction=True``) and does its own database work through
``run_in_short_session``, which leaves no connection behind on a shared thread.
"""

import asyncio
import contextlib
import gzip
import json
from datetime import timedelta
from functools import partial
from urllib.parse import urlencode

import psycopg
import pytest
from django.db import OperationalError
from django.utils import timezone

from apikeys.asyncdb import run_in_short_session as db
from apikeys.models import APIKey
from executions import recorder as recorder_module
from executions import sessions
from executions.fanout import Hub, get_hub
from executions.models import Event, Execution
from executions.recorder import ExecutionRecorder
from tests.hub import TIMEOUT, eventually, hub_is_idle
from tests.live_server import (
    CORE_LAYER,
    KEEPALIVE_FRAME,
    PUBSUB_LAYER,
    database_url,
    expected_body,
    forget_groups,
    frames_of,
    group_members,
    ids_of,
    redis_layer,
)
from tests.runs import completed_run, running
from tests.streams import Stream, assert_error, get

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_cancelled_tasks"),
]

KEEPALIVE = 0.3


@pytest.fixture(autouse=True)
def stream_settings(settings):
    """A short keepalive, and a channel layer of the test's own: each test runs its own
    event loop, and a channels-redis layer must only ever receive on one loop (a server
    process has just one)."""
    settings.EXECUTIONS = {**settings.EXECUTIONS, "KEEPALIVE_INTERVAL": KEEPALIVE}
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}


@pytest.fixture(params=[PUBSUB_LAYER, CORE_LAYER], ids=["pubsub-layer", "core-layer"])
def layer(request, settings):
    """Each of channels-redis' layers in turn (the site uses the pub/sub one)."""
    settings.CHANNEL_LAYERS = {"default": redis_layer(request.param)}
    return request.param


def failed_run(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream")
    recorder.start()
    with contextlib.suppress(ValueError), recorder.node("parse", "transform"):
        raise ValueError("bad row")
    recorder.fail("bad row", node_id="parse")
    return recorder.execution_id


def cancelled_run(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream")
    recorder.start()
    recorder.cancel()
    return recorder.execution_id


def finish_two_nodes(recorder):
    for node_id in ("a", "b"):
        with recorder.node(node_id, "transform") as node:
            node.outputs = {"node": node_id}
    recorder.complete({"nodes": 2})


@pytest.mark.parametrize(
    ("run", "status"),
    [(completed_run, "completed"), (failed_run, "failed"), (cancelled_run, "cancelled")],
    ids=["completed", "failed", "cancelled"],
)
async def test_late_join_replays_every_frame_byte_for_byte_then_ends(
    user, raw_key, connect, run, status
):
    execution_id = await db(run, user)
    stream = await connect(execution_id, raw_key)
    body = await stream.end()
    assert body == await db(expected_body, execution_id, status)
    assert stream.ids == list(range(1, len(stream.ids) + 1))
    await eventually(hub_is_idle)


async def test_the_stream_carries_every_event_type_of_the_contract(user, raw_key, connect):
    seen = set()
    for run in (completed_run, failed_run, cancelled_run):
        stream = await connect(await db(run, user), raw_key)
        await stream.end()
        for frame in stream.frames[1:]:
            lines = frame.split(b"\n")
            event = lines[-2].removeprefix(b"event: ").decode()
            data = json.loads(lines[-1].removeprefix(b"data: "))
            assert data["type"] == event
            assert list(data)[1] == "execution_id"
            seen.add(event)
    assert seen == {
        "connected",
        "execution:started",
        "execution:progress",
        "node:started",
        "node:completed",
        "node:failed",
        "execution:completed",
        "execution:failed",
        "execution:cancelled",
    }


async def test_the_response_is_an_uncached_unbuffered_event_stream(user, raw_key, connect):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    response = stream.response
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert response["X-Request-ID"]
    assert not response.has_header("Content-Length")


@pytest.mark.parametrize("after", [0, 3, 6])
@pytest.mark.parametrize("source", ["header", "query"])
async def test_last_event_id_resumes_exactly_after_it(user, raw_key, connect, source, after):
    execution_id = await db(completed_run, user)
    if source == "header":
        stream = await connect(execution_id, raw_key, **{"Last-Event-ID": str(after)})
    else:
        stream = await connect(execution_id, raw_key, query=f"?last_event_id={after}")
    body = await stream.end()
    assert body == await db(expected_body, execution_id, "completed", after)
    assert stream.ids[0] == after + 1


async def test_the_last_event_id_header_wins_over_the_query(user, raw_key, connect):
    execution_id = await db(completed_run, user)
    stream = await connect(
        execution_id, raw_key, query="?last_event_id=6", **{"Last-Event-ID": "2"}
    )
    await stream.end()
    assert stream.ids[0] == 3


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", " 3", "3 ", "+3", "0x3", "1e3"])
@pytest.mark.parametrize("source", ["header", "query"])
async def test_a_malformed_last_event_id_is_a_validation_error(user, raw_key, source, value):
    recorder = await db(running, user)
    if source == "header":
        response = await get(recorder.execution_id, raw_key, **{"Last-Event-ID": value})
    else:
        query = "?" + urlencode({"last_event_id": value})
        response = await get(recorder.execution_id, raw_key, query=query)
    assert_error(response, 400, "validation_error")


async def test_a_last_event_id_with_a_trailing_newline_is_a_validation_error(user, raw_key):
    recorder = await db(running, user)
    response = await get(recorder.execution_id, raw_key, query="?last_event_id=3%0A")
    assert_error(response, 400, "validation_error")
    if response.streaming:
        await Stream(response).close()


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {"Last-Event-ID": "LAST"}),
        ("", {"Last-Event-ID": "99"}),
        ("?last_event_id=LAST", {}),
    ],
    ids=["header-at-terminal", "header-beyond-terminal", "query-at-terminal"],
)
async def test_a_reconnect_after_the_terminal_event_is_204_without_body(
    user, raw_key, query, headers
):
    execution_id = await db(completed_run, user)
    last = str(await db(lambda: Execution.objects.get(pk=execution_id).last_seq))
    headers = {name: value.replace("LAST", last) for name, value in headers.items()}
    response = await get(execution_id, raw_key, query=query.replace("LAST", last), **headers)
    assert response.status_code == 204
    assert not response.streaming
    assert response.content == b""


async def test_an_execution_the_key_may_not_see_is_the_same_404_as_a_missing_one(
    user, other_user, make_key
):
    _, live_raw = await db(make_key)
    _, test_raw = await db(make_key, mode="test")
    _, other_raw = await db(make_key, owner=other_user)
    live = (await db(running, user)).execution_id
    test = (await db(running, user, mode="test")).execution_id
    cases = [
        (live_raw, "exec_doesnotexist0000000000000"),  # missing
        (other_raw, live),  # another owner's
        (test_raw, live),  # a test key and a live execution
        (live_raw, test),  # a live key and a test execution
    ]
    normalised = []
    for raw, execution_id in cases:
        response = await get(execution_id, raw)
        error = assert_error(response, 404, "resource_not_found")
        assert error["details"] == {"resource": "execution", "id": execution_id}
        assert not response.has_header("WWW-Authenticate")
        normalised.append(json.loads(json.dumps(error).replace(execution_id, "<id>")))
    assert all(error == normalised[0] for error in normalised)


async def test_errors_before_the_stream_are_json_envelopes(user, make_key):
    recorder = await db(running, user)
    execution_id = recorder.execution_id
    assert_error(await get(execution_id), 401, "invalid_api_key")
    assert_error(await get(execution_id, "fm_live_short"), 401, "invalid_api_key")
    revoked, revoked_raw = await db(make_key)
    await db(revoked.revoke)
    assert_error(await get(execution_id, revoked_raw), 401, "revoked_api_key")
    _, expired_raw = await db(make_key, expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(await get(execution_id, expired_raw), 401, "expired_api_key")
    _, unscoped_raw = await db(make_key, scopes=["workflows:read", "executions:cancel"])
    error = assert_error(await get(execution_id, unscoped_raw), 403, "insufficient_scope")
    assert error["details"] == {
        "required_scopes": ["executions:read"],
        "missing_scopes": ["executions:read"],
        "your_scopes": ["workflows:read", "executions:cancel"],
    }


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
async def test_both_key_headers_open_the_stream(user, raw_key, connect, header):
    execution_id = await db(completed_run, user)
    value = raw_key if header == "X-API-Key" else f"Bearer {raw_key}"
    stream = await connect(execution_id, None, **{header: value})
    assert await stream.end() == await db(expected_body, execution_id, "completed")


async def test_a_test_key_streams_a_test_execution(user, make_key, connect):
    _, raw = await db(make_key, mode="test")
    recorder = await db(running, user, mode="test")
    stream = await connect(recorder.execution_id, raw)
    await stream.wait_for(lambda s: s.ids == [1])


async def test_keepalive_comments_fill_the_silence(user, raw_key, connect):
    recorder = await db(running, user, events=2)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.frames.count(KEEPALIVE_FRAME) >= 3)
    opening = await db(expected_body, recorder.execution_id, "running")
    assert stream.body.startswith(opening)
    assert set(frames_of(stream.body.removeprefix(opening))) == {KEEPALIVE_FRAME}


async def test_keepalives_go_on_while_the_key_check_waits_on_the_database(user, raw_key, connect):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    # Another session locks the keys' table: every re-check of the key waits on it.
    async with await psycopg.AsyncConnection.connect(database_url()) as locker:
        await locker.execute(f"LOCK TABLE {APIKey._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        seen = stream.frames.count(KEEPALIVE_FRAME)
        await stream.wait_for(lambda s: s.frames.count(KEEPALIVE_FRAME) >= seen + 4)
        await locker.rollback()
    await db(recorder.complete)
    await stream.end()
    assert stream.ids == [1, 2]


async def test_a_revoked_key_ends_its_stream_on_time_while_replays_wait_on_a_locked_log(
    user, make_key, connect, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "REPLAY_BATCH_SIZE": 2}
    key, raw = await db(make_key)
    _, other_raw = await db(make_key)
    watched, busy = await db(running, user), await db(running, user, events=6)
    stream = await connect(watched.execution_id, raw)
    await stream.wait_for(lambda s: s.ids == [1])
    async with await psycopg.AsyncConnection.connect(database_url()) as locker:
        await locker.execute(f"LOCK TABLE {Event._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        # More replays than the stream-opening threads: all of them wait on the lock.
        replays = [
            asyncio.create_task(get(busy.execution_id, other_raw, **{"Last-Event-ID": "0"}))
            for _ in range(8)
        ]
        await db(key.revoke)
        await stream.end(within=10 * KEEPALIVE)
        assert not any(replay.done() for replay in replays)  # the lock held all along
        await locker.rollback()
    for response in await asyncio.gather(*replays):
        replayed = Stream(response)
        await replayed.wait_for(lambda s: s.ids == [1, 2, 3, 4, 5, 6])
        await replayed.close()


async def test_a_last_event_id_beyond_the_log_ends_the_stream_at_the_terminal_event(
    user, raw_key, connect
):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key, **{"Last-Event-ID": "100"})
    await db(recorder.progress, completed_nodes=1, total_nodes=2)
    await db(recorder.complete)
    body = await stream.end()
    assert stream.ids == []
    assert body.startswith(b"retry: 3000\n\nevent: connected\n")
    reconnect = await get(recorder.execution_id, raw_key, **{"Last-Event-ID": "100"})
    assert reconnect.status_code == 204


KEY_CHANGES = {
    "revoked": lambda key: key.revoke(),
    "scope-withdrawn": lambda key: APIKey.objects.filter(pk=key.pk).update(
        scopes=["workflows:read"]
    ),
    "owner-deactivated": lambda key: (
        type(key.owner).objects.filter(pk=key.owner_id).update(is_active=False)
    ),
}


@pytest.mark.parametrize("change", sorted(KEY_CHANGES))
async def test_a_key_that_may_no_longer_read_ends_its_open_stream(user, make_key, connect, change):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(KEY_CHANGES[change], key)
    # Rule 6 gives one keepalive interval; allow for a slow machine.
    await stream.end(within=10 * KEEPALIVE)
    await eventually(hub_is_idle)


async def test_a_stream_ends_once_its_key_expires(user, make_key, connect):
    _, raw = await db(make_key, expires_at=timezone.now() + timedelta(seconds=1))
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw)
    await stream.end(within=1 + 10 * KEEPALIVE)


async def test_a_stream_delivers_events_recorded_after_it_connected(user, raw_key, connect, layer):
    recorder = await db(running, user)
    await db(lambda: Execution.objects.filter(pk=recorder.execution_id).update(total_nodes=2))
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(recorder.progress, completed_nodes=0, current_node="a")
    await stream.wait_for(lambda s: s.ids == [1, 2])
    await db(finish_two_nodes, recorder)
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")
    assert stream.ids == list(range(1, 10))


async def test_a_stream_opened_before_the_execution_starts_follows_it(user, raw_key, connect):
    recorder = await db(ExecutionRecorder.create, owner=user, workflow_id="wf_stream")
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: len(s.frames) == 2)
    await db(recorder.start)
    await db(recorder.complete, {"ok": True})
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "pending")


async def test_two_streams_on_one_execution_each_get_every_event_once_in_order(
    user, raw_key, connect
):
    recorder = await db(running, user, events=2)
    first = await connect(recorder.execution_id, raw_key)
    await first.wait_for(lambda s: s.ids == [1, 2])
    await db(recorder.progress, completed_nodes=3)
    second = await connect(recorder.execution_id, raw_key)
    await second.wait_for(lambda s: s.ids == [1, 2, 3])
    topic = get_hub().topics[recorder.execution_id]
    assert len(topic.subscriptions) == 2  # one subscription to the layer serves both
    await db(finish_two_nodes, recorder)
    expected = await db(expected_body, recorder.execution_id, "running")
    for stream in (first, second):
        await stream.end()
        assert stream.events_body == expected


async def test_streams_opened_while_events_are_recorded_miss_and_repeat_nothing(
    user, raw_key, connect, layer
):
    recorder = await db(running, user)
    total = 60

    def record_many():
        for number in range(1, total):
            recorder.progress(completed_nodes=number, total_nodes=total)
        recorder.complete()

    writer = asyncio.ensure_future(db(record_many))
    streams = []
    for _ in range(4):
        streams.append(await connect(recorder.execution_id, raw_key))
        await asyncio.sleep(0.05)
    await writer
    for stream in streams:
        await stream.end()
        assert stream.ids == list(range(1, total + 2))


async def test_events_that_come_together_reach_a_stream_in_one_write(
    user, raw_key, connect, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "BATCH_INTERVAL": 1.0}
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    before = len(stream.writes)
    await db(recorder.progress, completed_nodes=1, total_nodes=3)
    await stream.wait_for(lambda s: s.ids == [1, 2])  # at once: nothing went out lately

    def record_two():
        recorder.progress(completed_nodes=2, total_nodes=3)
        recorder.progress(completed_nodes=3, total_nodes=3)

    await db(record_two)
    await stream.wait_for(lambda s: s.ids == [1, 2, 3, 4])
    # The two that came within the interval of the last hand-out go out together.
    assert [ids_of(w) for w in stream.writes[before:] if ids_of(w)] == [[2], [3, 4]]


def append_unpublished(recorder):
    """Log the execution's next event the way the recorder does, but never publish it,
    as if the channel layer had dropped it."""
    execution = recorder.execution
    execution.last_seq += 1
    execution.save(update_fields=["last_seq"])
    Event.objects.create(
        execution=execution,
        seq=execution.last_seq,
        type="execution:progress",
        data=json.dumps(
            {
                "type": "execution:progress",
                "execution_id": execution.pk,
                "progress": 50,
                "current_node": None,
                "completed_nodes": 1,
                "total_nodes": 2,
            }
        ),
    )


@pytest.fixture
def no_polling(settings):
    """Make the log poll too rare to matter: only a channel message reveals a gap."""
    settings.EXECUTIONS = {**settings.EXECUTIONS, "POLL_INTERVAL": 60.0}


async def test_an_event_the_layer_never_brought_is_filled_in_from_the_log(
    user, raw_key, connect, no_polling
):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(append_unpublished, recorder)
    await db(append_unpublished, recorder)
    await db(recorder.progress, completed_nodes=2, total_nodes=2)
    await stream.wait_for(lambda s: s.ids == [1, 2, 3, 4])
    await db(recorder.complete)
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_replay_and_gap_filling_read_the_log_in_batches(
    user, raw_key, connect, no_polling, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "REPLAY_BATCH_SIZE": 2}
    finished = await db(completed_run, user, nodes=2)
    replayed = await connect(finished, raw_key)
    assert await replayed.end() == await db(expected_body, finished, "completed")

    recorder = await db(running, user, events=3)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1, 2, 3])
    for _ in range(5):
        await db(append_unpublished, recorder)
    await db(recorder.complete)
    await stream.end()
    assert stream.ids == list(range(1, 10))
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_messages_dropped_by_the_layer_are_filled_in_from_the_log(
    user, raw_key, connect, no_polling, layer, monkeypatch
):
    publish_all = recorder_module.publish_all

    def publish_even_only(msgs):
        evens = [{**msg, "events": [e for e in msg["events"] if e[0] % 2 == 0]} for msg in msgs]
        publish_all([msg for msg in evens if msg["events"]])

    monkeypatch.setattr(recorder_module, "publish_all", publish_even_only)
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(finish_two_nodes, recorder)  # seq 2..6: 3 and 5 are never published
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_a_stream_recovers_when_the_layer_forgets_its_group(
    user, raw_key, connect, redis_client, layer
):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    forget_groups(redis_client, recorder.execution_id)
    await db(recorder.progress, completed_nodes=1, total_nodes=3)
    await stream.wait_for(lambda s: s.ids == [1, 2])  # from the log, by polling
    await eventually(lambda: group_members(redis_client, recorder.execution_id) == 1)
    await db(finish_two_nodes, recorder)
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_messages_over_the_core_layers_capacity_are_filled_in_from_the_log(
    user, raw_key, connect, no_polling, settings
):
    settings.CHANNEL_LAYERS = {"default": redis_layer(CORE_LAYER)}
    settings.CHANNEL_LAYERS["default"]["CONFIG"] = {
        **settings.CHANNEL_LAYERS["default"]["CONFIG"],
        "capacity": 1,
    }
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(finish_two_nodes, recorder)  # six events at once into a channel that holds one
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_a_client_going_away_leaves_no_subscription_behind(
    user, raw_key, connect, redis_client, layer
):
    recorder = await db(running, user)
    members = partial(group_members, redis_client, recorder.execution_id)
    first = await connect(recorder.execution_id, raw_key)
    second = await connect(recorder.execution_id, raw_key)
    await first.wait_for(lambda s: s.ids == [1])
    await second.wait_for(lambda s: s.ids == [1])
    hub = get_hub()
    assert members() == 1  # one channel per process, however many streams

    await first.close()
    assert list(hub.topics) == [recorder.execution_id]
    assert members() == 1
    await db(recorder.progress, completed_nodes=1, total_nodes=2)
    await second.wait_for(lambda s: s.ids == [1, 2])

    await second.close()
    await eventually(hub_is_idle)
    await eventually(lambda: members() == 0)


async def test_a_stream_that_ends_leaves_no_subscription_behind(
    user, raw_key, connect, redis_client, layer
):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(recorder.complete)
    await stream.end()
    await eventually(hub_is_idle)
    await eventually(lambda: group_members(redis_client, recorder.execution_id) == 0)


async def test_gzip_middleware_leaves_the_stream_uncompressed(user, raw_key, connect, settings):
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    missing = "exec_" + "x" * 200
    not_found = await get(missing, raw_key, **{"Accept-Encoding": "gzip"})
    assert not_found["Content-Encoding"] == "gzip"  # the middleware is in place
    assert json.loads(gzip.decompress(not_found.content))["error"]["details"]["id"] == missing

    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key, **{"Accept-Encoding": "gzip"})
    assert not stream.response.has_header("Content-Encoding")
    assert stream.response["Content-Type"] == "text/event-stream"
    await stream.wait_for(lambda s: s.ids == [1])
    await db(finish_two_nodes, recorder)
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")


async def test_a_client_that_leaves_while_its_stream_subscribes_leaves_nothing_behind(
    user, raw_key, monkeypatch
):
    joining, release = asyncio.Event(), asyncio.Event()
    join = Hub.join

    async def slow_join(self, group):
        joining.set()
        await release.wait()
        await join(self, group)

    monkeypatch.setattr(Hub, "join", slow_join)
    recorder = await db(running, user)
    stream = Stream(await get(recorder.execution_id, raw_key))
    await asyncio.wait_for(joining.wait(), TIMEOUT)
    await stream.close()
    release.set()
    await eventually(hub_is_idle)


async def test_a_database_error_as_a_new_topic_catches_up_does_not_wedge_the_execution(
    user, raw_key, connect, monkeypatch
):
    run = sessions.run
    calls = []

    async def first_log_read_fails(kind, func, *args):
        if kind == "log":
            calls.append(func)
            if len(calls) == 1:
                raise OperationalError("the database went away")
        return await run(kind, func, *args)

    monkeypatch.setattr(sessions, "run", first_log_read_fails)
    recorder = await db(running, user)
    first = await connect(recorder.execution_id, raw_key)
    second = await connect(recorder.execution_id, raw_key)
    await db(recorder.complete)
    for stream in (first, second):
        await stream.end(within=5)
        assert stream.ids == [1, 2]


async def test_a_stream_too_slow_to_keep_up_ends_and_resumes_without_loss(
    user, raw_key, connect, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "STREAM_QUEUE_SIZE": 3}
    recorder = await db(running, user)
    response = await get(recorder.execution_id, raw_key)
    content = aiter(response.streaming_content)
    body = b""
    while ids_of(body) != [1]:
        body += await anext(content)
    # Past its replay, the stream takes events live.
    await db(recorder.progress, completed_nodes=0, total_nodes=10)
    while ids_of(body) != [1, 2]:
        body += await anext(content)

    def record_ten():
        for number in range(1, 11):
            recorder.progress(completed_nodes=number, total_nodes=10)

    await db(record_ten)  # while the client reads nothing
    topic = get_hub().topics[recorder.execution_id]
    await eventually(lambda: topic.last_seq == 12)
    async with asyncio.timeout(TIMEOUT):
        async for chunk in content:  # the stream gave up on this client and ends
            body += chunk
    last = ids_of(body)[-1]
    assert ids_of(body) == list(range(1, last + 1))

    resumed = await connect(recorder.execution_id, raw_key, **{"Last-Event-ID": str(last)})
    await db(recorder.complete)
    await resumed.end()
    assert ids_of(body) + resumed.ids == list(range(1, 14))


async def test_events_during_a_streams_replay_are_read_from_the_log_not_queued(
    user, raw_key, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "STREAM_QUEUE_SIZE": 3}
    recorder = await db(running, user)
    response = await get(recorder.execution_id, raw_key)
    content = aiter(response.streaming_content)
    body = await anext(content)  # the opening and the first replay batch; then nothing

    def record_ten():
        for number in range(1, 11):
            recorder.progress(completed_nodes=number, total_nodes=10)

    await db(record_ten)
    topic = get_hub().topics[recorder.execution_id]
    [subscription] = topic.subscriptions
    # Handed out (not only received): the topic moved the replaying stream's from_seq on.
    await eventually(lambda: subscription.from_seq == 11)
    assert (subscription.items, subscription.ended) == ([], None)  # not too slow: replaying
    await db(recorder.complete)
    await eventually(lambda: subscription.from_seq == 12)
    async with asyncio.timeout(TIMEOUT):
        async for chunk in content:
            body += chunk
    assert ids_of(body) == list(range(1, 13))


async def test_a_stream_ends_when_its_execution_is_deleted(user, raw_key, connect, settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "POLL_INTERVAL": 0.2}
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(Execution.objects.filter(pk=recorder.execution_id).delete)
    await stream.end()
    await eventually(hub_is_idle)


async def test_a_site_without_a_channel_layer_still_streams_from_the_log(
    user, raw_key, connect, settings
):
    settings.CHANNEL_LAYERS = {}
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, raw_key)
    await stream.wait_for(lambda s: s.ids == [1])
    await db(finish_two_nodes, recorder)
    await stream.end()
    assert stream.events_body == await db(expected_body, recorder.execution_id, "running")
