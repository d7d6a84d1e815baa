"""How many streams a key or a user holds open (``EXECUTIONS["MAX_STREAMS_PER_KEY"]``),
counted across processes in Redis, and how much a slow stream may queue."""

import asyncio
import threading

import pytest
import redis
from django.conf import settings as django_settings
from django.test import AsyncClient
from prometheus_client import REGISTRY

from apikeys.asyncdb import run_in_short_session as db
from executions import sessions, slots
from executions.asgi import StreamingASGIHandler
from tests.hub import eventually
from tests.live_server import events_url, ids_of
from tests.runs import running
from tests.streams import Exchange, Stream, assert_error, get

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_cancelled_tasks"),
]


@pytest.fixture(autouse=True)
def two_streams_per_key(settings):
    settings.EXECUTIONS = {
        **settings.EXECUTIONS,
        "KEEPALIVE_INTERVAL": 0.3,
        "MAX_STREAMS_PER_KEY": 2,
    }
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}


def counts_key(owner):
    prefix = django_settings.APIKEYS["RATE_LIMIT_KEY_PREFIX"]
    return f"{prefix}:streams:{owner}"


def held(redis_client, owner):
    return sum(int(count) for count in redis_client.hvals(counts_key(owner)))


async def test_a_key_holds_at_most_its_limit_of_open_streams(user, make_key, connect):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    first = await connect(recorder.execution_id, raw)
    await connect(recorder.execution_id, raw)
    refused = await get(recorder.execution_id, raw)
    error = assert_error(refused, 429, "rate_limit_exceeded")
    assert error["details"]["window"] == "open_streams"
    assert error["details"]["limit"] == 2
    assert int(refused["Retry-After"]) >= 1
    await first.close()
    await eventually(lambda: slots.store().client.hvals(counts_key(f"key:{key.pk}")) == [b"1"])
    await connect(recorder.execution_id, raw)


async def test_another_keys_streams_do_not_count(user, make_key, connect):
    _, raw = await db(make_key)
    _, other = await db(make_key)
    recorder = await db(running, user)
    for _ in range(2):
        await connect(recorder.execution_id, raw)
    await connect(recorder.execution_id, other)


async def test_a_stream_that_ends_gives_its_slot_back(user, make_key, connect, redis_client):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    streams = [await connect(recorder.execution_id, raw) for _ in range(2)]
    assert held(redis_client, f"key:{key.pk}") == 2
    await db(recorder.complete)
    for stream in streams:
        await stream.end()
    await eventually(lambda: held(redis_client, f"key:{key.pk}") == 0)


async def test_a_client_that_vanishes_before_its_stream_starts_leaks_no_slot(
    user, make_key, redis_client, settings
):
    # One thread opens streams: what it runs next runs after this stream's opening.
    settings.EXECUTIONS = {
        **settings.EXECUTIONS,
        "DATABASE_THREADS": {"open": 1, "log": 1, "check": 1},
    }
    key, raw = await db(make_key)
    recorder = await db(running, user)
    exchange = Exchange(
        StreamingASGIHandler(),
        events_url(recorder.execution_id),
        [(b"x-api-key", raw.encode())],
    )
    opens = REGISTRY.get_sample_value("executions_stream_opens_total", {"grant": "APIKeyGrant"})
    await exchange.disconnect()  # at once, as the server may still be opening the stream
    await sessions.run("open", lambda: None)
    # The stream was opened (its slot taken) after its client had gone.
    assert (
        REGISTRY.get_sample_value("executions_stream_opens_total", {"grant": "APIKeyGrant"})
        == (opens or 0) + 1
    )
    await eventually(lambda: held(redis_client, f"key:{key.pk}") == 0)
    assert exchange.messages == []


async def test_the_slots_of_a_process_that_died_stop_counting(
    user, make_key, connect, redis_client
):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    # A process that held two streams and no longer renews its heartbeat.
    redis_client.hset(counts_key(f"key:{key.pk}"), "dead-process", 2)
    await connect(recorder.execution_id, raw)
    assert redis_client.hget(counts_key(f"key:{key.pk}"), "dead-process") is None


async def test_taking_a_slot_renews_this_processs_heartbeat_in_the_same_round_trip(
    redis_client, monkeypatch
):
    prefix = django_settings.APIKEYS["RATE_LIMIT_KEY_PREFIX"]
    heartbeat, owner = f"{prefix}:streams:process:{slots.PROCESS_ID}", "key:heartbeat"
    (await db(slots.acquire, owner)).release()  # Redis has the script from here on
    redis_client.delete(heartbeat)
    sent = []  # (thread, command): the fan-out's ticker renews on threads of its own
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        sent.append((threading.get_ident(), command))
        return send(self, command, check_health)

    def acquire():
        slot = slots.acquire(owner)
        return slot, [command for thread, command in sent if thread == threading.get_ident()]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    slot, commands = await db(acquire)
    monkeypatch.undo()
    assert len(commands) == 1
    assert redis_client.ttl(heartbeat) > 0
    assert held(redis_client, owner) == 1
    slot.release()
    assert held(redis_client, owner) == 0


async def test_the_slots_of_another_live_process_count(user, make_key, connect, redis_client):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    prefix = django_settings.APIKEYS["RATE_LIMIT_KEY_PREFIX"]
    redis_client.set(f"{prefix}:streams:process:other", 1, ex=30)
    redis_client.hset(counts_key(f"key:{key.pk}"), "other", 2)
    assert_error(await get(recorder.execution_id, raw), 429, "rate_limit_exceeded")


async def test_without_redis_each_process_counts_its_own(user, make_key, connect, settings):
    settings.APIKEYS = {**settings.APIKEYS, "RATE_LIMIT_REDIS_URL": None}
    _, raw = await db(make_key)
    recorder = await db(running, user)
    first = await connect(recorder.execution_id, raw)
    await connect(recorder.execution_id, raw)
    assert_error(await get(recorder.execution_id, raw), 429, "rate_limit_exceeded")
    await first.close()
    await eventually(lambda: sum(slots.store().counts.values()) == 1)
    await connect(recorder.execution_id, raw)


async def test_a_users_sessions_count_together(user, connect):
    client = AsyncClient()
    await db(client.force_login, user)
    recorder = await db(running, user)
    for _ in range(2):
        await connect(recorder.execution_id, None, client=client)
    assert_error(await get(recorder.execution_id, client=client), 429, "rate_limit_exceeded")


# How much a slow stream may queue: events and bytes.


async def test_a_stream_whose_queue_outgrows_its_bytes_ends_and_resumes_without_loss(
    user, raw_key, connect, settings
):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "STREAM_QUEUE_BYTES": 4000}
    recorder = await db(running, user)
    response = await get(recorder.execution_id, raw_key)
    stream = Stream(response)
    await stream.wait_for(lambda s: s.ids == [1])
    stream.task.cancel()  # stop reading, as a stuck client does
    reader = aiter(response.streaming_content)

    def record_burst():
        with recorder.batch():
            for number in range(1, 11):
                recorder.progress(completed_nodes=number, current_node="x" * 1000)

    await db(record_burst)
    body = stream.body
    async with asyncio.timeout(10):
        async for chunk in reader:  # the server gave up on it: what was queued, then the end
            body += chunk
    last = ids_of(body)[-1]
    assert last < 11
    resumed = await connect(recorder.execution_id, raw_key, **{"Last-Event-ID": str(last)})
    await db(recorder.complete)
    await resumed.end()
    assert ids_of(body) + resumed.ids == list(range(1, 13))
