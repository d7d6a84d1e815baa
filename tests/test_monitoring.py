"""Health endpoints and Prometheus metrics (``executions.health``, ``executions.metrics``)."""

import io
import json
import logging
import re
import sys

import httpx
import pytest
from django.test import Client
from prometheus_client import generate_latest

from apikeys.asyncdb import run_in_short_session as db
from apikeys.logs import JSONFormatter, RequestContextFilter
from executions import health
from executions.metrics import registry
from tests.live_server import Producer, events_url, live_server
from tests.runs import running
from tests.streams import get
from tests.test_api import fetch_events

pytestmark = pytest.mark.django_db(transaction=True)

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def test_liveness_answers_without_credentials(client):
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readiness_says_up_when_postgresql_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "up", "redis": "up"}}
    assert "no-cache" in response["Cache-Control"]


def test_readiness_is_503_when_redis_does_not_answer(client, settings):
    settings.APIKEYS = {**settings.APIKEYS, "RATE_LIMIT_REDIS_URL": UNREACHABLE_REDIS}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "up", "redis": "down"},
    }


def test_readiness_is_503_when_the_database_does_not_answer(client, monkeypatch):
    def broken():
        raise ConnectionError("the database is gone")

    monkeypatch.setattr(health, "database_answers", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "down"
    assert "gone" not in response.content.decode()  # up or down, nothing more


def test_metrics_are_a_404_to_the_public_and_to_a_non_staff_user(client, user):
    assert client.get("/metrics").status_code == 404
    client.force_login(user)
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer guess"}).status_code == 404


def test_metrics_answer_a_staff_session_and_the_bearer_secret(client, user, settings):
    user.is_staff = True
    user.save()
    client.force_login(user)
    assert client.get("/metrics").status_code == 200
    settings.EXECUTIONS = {**settings.EXECUTIONS, "METRICS_TOKEN": "s3cret-scraper-token"}
    scraper = Client().get("/metrics", headers={"Authorization": "Bearer s3cret-scraper-token"})
    assert scraper.status_code == 200
    assert scraper["Content-Type"].startswith("text/plain")


def sample(text, name, **labels):
    """The value of a metric sample in Prometheus' text format, or 0."""
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def read_metrics():
    return generate_latest(registry()).decode()


@pytest.mark.asyncio
async def test_streams_recorded_events_and_refusals_are_counted(user, make_key):
    _, raw = await db(make_key)
    before = read_metrics()
    recorder = await db(running, user)
    await db(recorder.complete)
    response = await get(recorder.execution_id, raw)
    assert response.status_code == 200
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert b"execution:completed" in body
    assert (await get(recorder.execution_id, "fm_live_" + "x" * 32)).status_code == 401
    after = read_metrics()

    def grew(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("executions_events_recorded_total", type="execution:completed") == 1
    assert grew("executions_stream_opens_total", grant="APIKeyGrant") == 1
    assert grew("executions_stream_closes_total", reason="terminal") == 1
    assert grew("executions_events_delivered_total", source="log") == 0  # finished: no topic
    assert grew("executions_replay_events_count") == 1
    assert grew("api_authentication_failures_total", code="invalid_api_key") == 1
    assert sample(after, "executions_open_streams") == sample(before, "executions_open_streams")


def test_metrics_add_up_every_process_in_multiprocess_mode(user, raw_key, tmp_path):
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": "scrape-me-please"}
    with live_server("uvicorn", **shared) as server:
        producer = Producer(user.username, {"nodes": 2, "delay_ms": 0}, **shared)
        producer.wait()
        stream = httpx.get(
            server.url + events_url(producer.execution_id), headers={"X-API-Key": raw_key}
        )
        assert stream.status_code == 200
        scraped = httpx.get(
            server.url + "/metrics", headers={"Authorization": "Bearer scrape-me-please"}
        )
    assert scraped.status_code == 200
    text = scraped.text
    # Recorded by the producer's process, streamed by the server's.
    assert sample(text, "executions_events_recorded_total", type="execution:completed") == 1
    assert sample(text, "executions_events_recorded_total", type="node:started") == 2
    assert sample(text, "executions_stream_closes_total", reason="terminal") == 1


# Structured logs.


def test_a_streams_log_lines_carry_its_request_id_and_grant_and_never_its_key(user, make_key):
    key, raw = make_key()
    recorder = running(user)
    recorder.complete({})
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JSONFormatter())
    logging.getLogger("executions.stream").addHandler(handler)
    try:
        response, _ = fetch_events(
            events_url(recorder.execution_id), raw, **{"X-Request-ID": "trace-1234567"}
        )
    finally:
        logging.getLogger("executions.stream").removeHandler(handler)
    assert response.status_code == 200
    lines = [json.loads(line) for line in handler.stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["Stream opened", "Stream closed"]
    for line in lines:
        assert line["request_id"] == "trace-1234567"
        assert line["grant"] == f"key {key.prefix}"
        assert line["execution_id"] == recorder.execution_id
        assert raw[len(key.prefix) :] not in json.dumps(line)
    assert lines[1]["reason"] == "terminal"


def test_json_log_lines_carry_extra_fields_and_exceptions():
    formatter = JSONFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord(
            {"msg": "failed %s", "args": ("x",), "levelname": "ERROR", "name": "t"}
        )
        record.exc_info = sys.exc_info()
    record.execution_id = "exec_1"
    line = json.loads(formatter.format(record))
    assert (line["message"], line["level"], line["execution_id"]) == ("failed x", "ERROR", "exec_1")
    assert "ValueError: boom" in line["exception"]
