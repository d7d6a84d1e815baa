import asyncio
import uuid

import pytest
import pytest_asyncio
import redis
from django.conf import settings

from apikeys.models import APIKey
from tests.hub import TIMEOUT
from tests.streams import Stream, get


@pytest.fixture(autouse=True)
def isolated_rate_limits(settings):
    """Give each test its own rate-limit counters in the real Redis."""
    settings.APIKEYS = {**settings.APIKEYS, "RATE_LIMIT_KEY_PREFIX": f"test-rl:{uuid.uuid4().hex}"}


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def make_key(user):
    """Create a key and return ``(api_key, raw_key)``; defaults to full access for ``user``."""

    def make(owner=None, scopes=None, mode="live", name="test key", **fields):
        from apikeys.scopes import all_scopes

        return APIKey.objects.create_key(
            owner=owner or user,
            name=name,
            mode=mode,
            scopes=list(all_scopes()) if scopes is None else scopes,
            **fields,
        )

    return make


@pytest.fixture
def raw_key(make_key):
    return make_key()[1]


@pytest_asyncio.fixture
async def settle_cancelled_tasks():
    """Let tasks being cancelled (the hub's receiver, stopped with the last stream) finish
    before the test's loop closes, cancelling them again while they do: on Python 3.11 a
    cancel that meets redis-py's read timeout comes out as a TimeoutError that redis-py
    retries, so a channels-redis receive() may go on after its first cancel."""
    yield
    current = asyncio.current_task()
    stopping = {task for task in asyncio.all_tasks() if task is not current and task.cancelling()}
    async with asyncio.timeout(TIMEOUT):
        while stopping:
            _, stopping = await asyncio.wait(stopping, timeout=0.2)
            for task in stopping:
                task.cancel()


@pytest_asyncio.fixture
async def connect():
    """Open a stream (``connect(execution_id, raw, **headers)``) that must start with 200;
    every stream still open is closed after the test."""
    streams = []

    async def open_stream(execution_id, raw, *, query="", client=None, **headers):
        response = await get(execution_id, raw, query=query, client=client, **headers)
        assert response.status_code == 200, response.content
        assert response.streaming
        stream = Stream(response)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        await stream.close()
