import uuid

import pytest
import redis
from django.conf import settings

from apikeys.models import APIKey


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
