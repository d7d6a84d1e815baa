"""Per-key rate limits, counted in the real Redis (or Django's cache), and their headers."""

import time
import uuid

import pytest
from django.conf import settings as django_settings

from tests.test_apikeys_auth import (
    ASYNC_SCOPED,
    DRF_ANY,
    DRF_SCOPED,
    SCOPED_VIEWS,
    assert_error,
    call,
    configure,
)

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def same_window():
    """Start the test well inside a minute, so its requests share one counting window.

    Counters are per wall-clock minute (and day); a test that crossed a boundary would
    see its count reset. This waits at most a few seconds, and only near a boundary.
    """
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left)


def assert_rate_limited(response, limit, window):
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= {"minute": 60, "day": 86_400}[window]
    assert_error(
        response,
        429,
        "rate_limit_exceeded",
        details={"limit": limit, "window": window, "retry_after": retry_after},
    )
    assert response["X-RateLimit-Limit"] == str(limit)
    assert response["X-RateLimit-Remaining"] == "0"


def rate_limit_headers(response):
    return {name: response.get(name) for name in ("Limit", "Remaining", "Reset")}


def counters(redis_client):
    """Return ``{key: count}`` for this test's rate-limit counters in Redis."""
    prefix = django_settings.APIKEYS["RATE_LIMIT_KEY_PREFIX"]
    return {
        key.decode(): int(redis_client.get(key))
        for key in redis_client.scan_iter(match=f"{prefix}:*")
    }


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_every_authenticated_response_carries_rate_limit_headers(
    client, make_key, same_window, path, required
):
    _, raw = make_key(rate_limit_per_minute=5, rate_limit_per_day=1000)
    remaining = []
    for _ in range(3):
        response = call(client, path, raw)
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "5"
        assert int(response["X-RateLimit-Reset"]) % 60 == 0
        remaining.append(response["X-RateLimit-Remaining"])
    assert remaining == ["4", "3", "2"]


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_error_responses_after_authentication_carry_rate_limit_headers(
    client, make_key, same_window, path, required
):
    _, raw = make_key(scopes=["agents:read"], rate_limit_per_minute=5)
    response = call(client, path, raw)
    assert response.status_code == 403
    assert response["X-RateLimit-Limit"] == "5"
    assert response["X-RateLimit-Remaining"] == "4"


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_unauthenticated_responses_carry_no_rate_limit_headers(client, path, required):
    response = call(client, path)
    assert response.status_code == 401
    assert "X-RateLimit-Limit" not in response


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_exceeding_the_per_minute_limit_answers_429(client, make_key, same_window, path, required):
    _, raw = make_key(rate_limit_per_minute=2, rate_limit_per_day=1000)
    assert [call(client, path, raw).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(call(client, path, raw), limit=2, window="minute")
    assert_rate_limited(call(client, path, raw), limit=2, window="minute")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_exceeding_the_per_day_limit_answers_429_for_the_day(
    client, make_key, same_window, path, required
):
    _, raw = make_key(rate_limit_per_minute=100, rate_limit_per_day=2)
    assert [call(client, path, raw).status_code for _ in range(2)] == [200, 200]
    response = call(client, path, raw)
    assert_rate_limited(response, limit=2, window="day")
    assert int(response["X-RateLimit-Reset"]) % 86_400 == 0


@pytest.mark.django_db
def test_rate_limits_are_per_key(client, make_key, same_window):
    _, exhausted = make_key(rate_limit_per_minute=1)
    _, fresh = make_key(rate_limit_per_minute=1)
    assert call(client, DRF_ANY, exhausted).status_code == 200
    assert call(client, DRF_ANY, exhausted).status_code == 429
    assert call(client, DRF_ANY, fresh).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("per_minute", "per_day", "expected"),
    [
        (5, 3, {"Limit": "3", "Remaining": "2", "window": 86_400}),
        (3, 5, {"Limit": "3", "Remaining": "2", "window": 60}),
        (50, 1000, {"Limit": "50", "Remaining": "49", "window": 60}),
    ],
    ids=["day-closer", "minute-closer", "minute-default"],
)
def test_headers_describe_the_window_closest_to_exhaustion(
    client, make_key, same_window, per_minute, per_day, expected
):
    _, raw = make_key(rate_limit_per_minute=per_minute, rate_limit_per_day=per_day)
    response = call(client, DRF_ANY, raw)
    assert response["X-RateLimit-Limit"] == expected["Limit"]
    assert response["X-RateLimit-Remaining"] == expected["Remaining"]
    reset = int(response["X-RateLimit-Reset"])
    assert reset % expected["window"] == 0
    assert 0 < reset - time.time() <= expected["window"]


@pytest.mark.django_db
def test_requests_are_counted_in_redis(client, make_key, redis_client, same_window):
    key, raw = make_key()
    assert counters(redis_client) == {}
    for _ in range(3):
        assert call(client, DRF_ANY, raw).status_code == 200

    found = counters(redis_client)
    assert sorted(name.split(":")[-3:-1] for name in found) == [
        [str(key.pk), "day"],
        [str(key.pk), "minute"],
    ]
    assert set(found.values()) == {3}
    prefix = django_settings.APIKEYS["RATE_LIMIT_KEY_PREFIX"]
    assert all(redis_client.ttl(name) > 0 for name in redis_client.scan_iter(f"{prefix}:*"))


@pytest.mark.django_db
def test_without_a_redis_url_counting_falls_back_to_the_django_cache(
    client, make_key, settings, redis_client, same_window
):
    configure(settings, RATE_LIMIT_REDIS_URL=None)
    _, raw = make_key(rate_limit_per_minute=2)
    responses = [call(client, DRF_ANY, raw) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert_rate_limited(responses[-1], limit=2, window="minute")
    assert counters(redis_client) == {}


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_unreachable_redis_lets_requests_through_when_failing_open(
    client, make_key, settings, path, required
):
    configure(settings, RATE_LIMIT_REDIS_URL=UNREACHABLE_REDIS, RATE_LIMIT_FAIL_OPEN=True)
    _, raw = make_key(rate_limit_per_minute=1)
    for _ in range(3):
        response = call(client, path, raw)
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_unreachable_redis_answers_503_when_failing_closed(
    client, make_key, settings, path, required
):
    configure(settings, RATE_LIMIT_REDIS_URL=UNREACHABLE_REDIS, RATE_LIMIT_FAIL_OPEN=False)
    _, raw = make_key()
    assert_error(call(client, path, raw), 503, "service_unavailable")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [ASYNC_SCOPED, DRF_SCOPED], ids=["async", "drf"])
def test_redis_connections_do_not_grow_with_requests(
    client, make_key, settings, redis_client, path
):
    # A client name of its own makes this test's connections countable among everyone's.
    name = f"rl-conn-test-{uuid.uuid4().hex}"
    separator = "&" if "?" in django_settings.REDIS_URL else "?"
    configure(
        settings, RATE_LIMIT_REDIS_URL=f"{django_settings.REDIS_URL}{separator}client_name={name}"
    )

    def connections():
        return sum(1 for c in redis_client.client_list() if c["name"] == name)

    _, raw = make_key(rate_limit_per_minute=10_000, rate_limit_per_day=100_000)
    assert call(client, path, raw).status_code == 200
    before = connections()
    assert before >= 1  # the counting really goes through the named client
    for _ in range(200):
        assert call(client, path, raw).status_code == 200
    assert connections() <= before + 5


@pytest.mark.django_db
def test_with_both_windows_exhausted_headers_describe_the_one_that_blocks_longer(
    client, make_key, same_window
):
    if time.time() % 86_400 > 86_400 - 65:
        pytest.skip("in the last minute of the day both windows end at the same time")
    _, raw = make_key(rate_limit_per_minute=2, rate_limit_per_day=2)
    assert [call(client, DRF_ANY, raw).status_code for _ in range(2)] == [200, 200]
    response = call(client, DRF_ANY, raw)
    assert_rate_limited(response, limit=2, window="day")
    assert int(response["X-RateLimit-Reset"]) % 86_400 == 0
