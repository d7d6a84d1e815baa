"""The live page and the browser ways into the stream, end to end: Playwright drives headless
Chromium (Debian's, ``tests.browser``) against real server processes on the real PostgreSQL
and Redis.

Each test records its execution's events itself, from this process, one step at a time, and
waits for the page to show each step before it records the next: nothing waits on a clock
but the bounds. ``SCREENSHOTS_DIR=docs/screenshots`` (``make screenshots``) also writes the
live page's screenshots.
"""

import json
import signal
import uuid

import httpx
import pytest
from django.core import signing
from playwright.sync_api import expect

from executions import tokens
from executions.models import Event
from executions.recorder import ExecutionRecorder
from tests.browser import (
    DESKTOP,
    PHONE,
    TIMEOUT_MS,
    chromium,
    log_in,
    screenshot,
    serve_page,
    server_env,
)
from tests.live_server import events_url, live_server
from tests.runs import completed_run

pytestmark = pytest.mark.django_db(transaction=True)

KEEPALIVE = 0.5
# The stream's `retry:`, which a browser waits before it reconnects by itself.
RETRY_MS = 3000
# A test that runs longer than this fails, whatever it waits on.
TEST_TIME_LIMIT = 60
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-1"}

# The page of an integrator's site on another origin: a native EventSource on the URL its
# backend minted (the test hands it over), recording what it receives.
INTEGRATOR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>An integrator's page</title></head>
<body>
<h1>Another origin</h1>
<script>
  const TYPES = [
    "execution:started", "execution:progress", "node:started", "node:completed",
    "node:failed", "execution:completed", "execution:failed", "execution:cancelled",
  ];
  window.received = [];
  window.connections = 0;
  window.errors = [];
  window.openStream = (url) => {
    const source = new EventSource(url);
    window.source = source;
    source.addEventListener("connected", () => { window.connections += 1; });
    for (const type of TYPES) {
      source.addEventListener(type, (event) => {
        window.received.push([Number(event.lastEventId), event.type, JSON.parse(event.data)]);
      });
    }
    source.addEventListener("error", () => {
      window.errors.push({readyState: source.readyState, at: performance.now()});
    });
  };
</script>
</body>
</html>
"""

# Run in a page: fetch a URL and report its status and, for a JSON answer, its error code.
FETCH = """async (url) => {
  const response = await fetch(url);
  const type = response.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await response.json() : null;
  return {status: response.status, type, code: body && body.error ? body.error.code : null};
}"""

MARKUP = {
    "html": "<script>window.pwned = true</script>",
    "image": "<img src=x onerror=window.pwned=true>",
}


@pytest.fixture(autouse=True)
def time_limit():
    """Fail a test that runs for more than ``TEST_TIME_LIMIT`` seconds."""

    def expired(signum, frame):
        pytest.fail(f"The test ran for more than {TEST_TIME_LIMIT} s.")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIME_LIMIT)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    """A page in a context of its own (no cookie of another test's), at desktop width; the
    test fails if the page's scripts raise."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, f"The page's scripts raised: {errors}"


@pytest.fixture(scope="module")
def other_origin():
    with serve_page(INTEGRATOR_PAGE) as origin:
        yield origin


def start_server(server, **env):
    return live_server(
        server,
        **server_env(
            EXECUTIONS_KEEPALIVE=str(KEEPALIVE),
            APIKEYS_RATE_LIMIT_KEY_PREFIX=f"test-rl:{uuid.uuid4().hex}",
            **env,
        ),
    )


@pytest.fixture(scope="module")
def server(django_db_setup, other_origin):
    """The demo site in uvicorn, which lets the integrator's origin in (CORS)."""
    with start_server("uvicorn", CORS_ALLOWED_ORIGINS=other_origin) as server:
        yield server


def page_path(execution_id):
    return f"/executions/{execution_id}/"


def node(page, node_id):
    return page.locator(f'[data-node-id="{node_id}"]')


def stream_state(page):
    return page.locator("[data-stream-state]")


def shown_outputs(container, role="outputs"):
    """Open the collapsed outputs of a node (or the execution's, ``role="execution-outputs"``)
    and return the value their visible JSON text says."""
    outputs = container.locator(f"[data-role='{role}']")
    expect(outputs).to_be_visible()
    if outputs.get_attribute("open") is None:
        outputs.locator("summary").click()
    text = outputs.locator("pre")
    expect(text).to_be_visible()
    return json.loads(text.inner_text())


def expect_node(page, node_id, status, label):
    element = node(page, node_id)
    expect(element).to_have_attribute("data-status", status)
    expect(element.locator("[data-role='status']")).to_have_text(label)
    return element


def expect_finished(page, status, summary):
    expect(page.locator("#execution")).to_have_attribute("data-status", status)
    expect(page.locator("[data-role='execution-status']")).to_have_text(status.capitalize())
    expect(stream_state(page)).to_have_attribute("data-stream-state", "finished")
    expect(stream_state(page)).to_have_text("Finished")
    expect(page.locator("[data-role='result-summary']")).to_contain_text(summary)
    expect(page.get_by_role("button", name="Cancel execution")).to_be_hidden()


def logged_events(execution_id):
    """The execution's events as the integrator's page records them: ``[id, type, data]``."""
    return [
        [seq, event_type, json.loads(data)]
        for seq, event_type, data in Event.objects.filter(execution_id=execution_id)
        .order_by("seq")
        .values_list("seq", "type", "data")
    ]


# The live page, over the session.

RUN = [
    ("fetch", "http", {"status": 200, "url": "https://example.com/api/items", "items": 3}),
    ("summarise", "ai_chat", {"model": "demo-llm", "text": "Three items; all consistent."}),
    ("publish", "transform", {"records": [{"step": 3, "value": 9}]}),
]


def test_a_logged_in_user_watches_every_node_arrive_and_finish_live_then_the_final_status(
    server, page, user
):
    recorder = ExecutionRecorder.create(
        owner=user, workflow_id="wf_demo", inputs={"nodes": 3}, total_nodes=3
    )
    recorder.start()
    log_in(page, server, "alice", PASSWORDS["alice"], page_path(recorder.execution_id))

    execution = page.locator("#execution")
    expect(execution).to_have_attribute("data-execution-id", recorder.execution_id)
    expect(execution).to_have_attribute("data-status", "running")
    expect(stream_state(page)).to_have_attribute("data-stream-state", "live")
    expect(page.locator("[data-node-id]")).to_have_count(0)
    progress = page.locator("progress")
    expect(progress).to_have_attribute("value", "0")

    for number, (node_id, node_type, outputs) in enumerate(RUN, 1):
        recorder.start_node(node_id, node_type)
        element = expect_node(page, node_id, "running", "Running")
        expect(element.locator("[data-role='node-type']")).to_have_text(node_type)
        expect(element.locator("[data-role='outputs']")).to_be_hidden()
        if number == 2:
            screenshot(page, "live-running")

        recorder.complete_node(node_id, outputs)
        expect_node(page, node_id, "completed", "Completed")
        assert shown_outputs(element) == outputs
        percent = round(100 * number / len(RUN))
        expect(progress).to_have_attribute("value", str(percent))
        expect(page.locator("[data-role='progress-text']")).to_have_text(
            f"{percent}% ({number} of {len(RUN)} nodes)"
        )

    recorder.complete({"nodes_run": 3, "published": True})
    expect_finished(page, "completed", "Completed in")
    expect(progress).to_have_attribute("value", "100")
    assert shown_outputs(page, "execution-outputs") == {"nodes_run": 3, "published": True}
    expect(page.locator("[data-node-id]")).to_have_count(len(RUN))
    screenshot(page, "live-completed", full_page=True)
    page.set_viewport_size(PHONE)
    screenshot(page, "live-completed-phone")


def test_a_failed_run_shows_the_failing_nodes_error_and_ends_failed_live(server, page, user):
    recorder = ExecutionRecorder.create(
        owner=user, workflow_id="wf_demo", inputs={"nodes": 3, "fail_at": 2}, total_nodes=3
    )
    recorder.start()
    with recorder.node("fetch", "http") as fetch:
        fetch.outputs = {"status": 200, "items": 3}
    log_in(page, server, "alice", PASSWORDS["alice"], page_path(recorder.execution_id))
    expect_node(page, "fetch", "completed", "Completed")
    expect(stream_state(page)).to_have_attribute("data-stream-state", "live")

    # Two nodes run side by side; one fails, and the run ends while the other still runs.
    recorder.start_node("summarise", "ai_chat")
    recorder.start_node("notify", "http")
    expect_node(page, "notify", "running", "Running")
    recorder.fail_node("summarise", "The model timed out after 30 s.")
    summarise = expect_node(page, "summarise", "failed", "Failed")
    expect(summarise.locator("[data-role='error']")).to_have_text(
        "Error: The model timed out after 30 s."
    )
    expect(summarise.locator("[data-role='outputs']")).to_be_hidden()

    error = "Node summarise failed: The model timed out after 30 s."
    recorder.fail(error, node_id="summarise")
    expect_finished(page, "failed", "Failed after")
    expect(page.locator("[data-role='execution-error']")).to_have_text(f"Error: {error}")
    notify = expect_node(page, "notify", "failed", "Failed")
    expect(notify.locator("[data-role='error']")).to_have_text(f"Error: {error}")
    expect(page.locator("[data-role='execution-outputs']")).to_be_hidden()
    expect(page.locator("[data-node-id]")).to_have_count(3)
    screenshot(page, "live-failed", full_page=True)


def refused(request):
    """A request to an event stream that found no server listening."""
    return "/events" in request.url and request.failure == "net::ERR_CONNECTION_REFUSED"


def test_a_page_whose_server_is_killed_mid_run_resumes_with_every_node_exactly_once(page, user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_demo", total_nodes=4)
    recorder.start()
    recorder.start_node("n1", "http")
    recorder.complete_node("n1", {"step": 1})
    with start_server("daphne") as server:
        log_in(page, server, "alice", PASSWORDS["alice"], page_path(recorder.execution_id))
        expect(stream_state(page)).to_have_attribute("data-stream-state", "live")
        recorder.start_node("n2", "ai_chat")
        expect_node(page, "n2", "running", "Running")

        # Down until the browser has tried to reconnect, and found no server.
        with page.expect_event("requestfailed", predicate=refused, timeout=RETRY_MS + TIMEOUT_MS):
            server.kill()
            expect(stream_state(page)).to_have_attribute("data-stream-state", "reconnecting")
            expect(stream_state(page)).to_have_text("Reconnecting…")
            # Recorded while no server runs: the log keeps them for the page's reconnect.
            recorder.complete_node("n2", {"step": 2})
            recorder.start_node("n3", "transform")
        expect(stream_state(page)).to_have_attribute("data-stream-state", "reconnecting")
        expect_node(page, "n2", "running", "Running")

        server.start()
        expect(stream_state(page)).to_have_attribute("data-stream-state", "live")
        expect_node(page, "n2", "completed", "Completed")
        expect_node(page, "n3", "running", "Running")

        recorder.complete_node("n3", {"step": 3})
        recorder.start_node("n4", "http")
        expect_node(page, "n4", "running", "Running")
        recorder.complete_node("n4", {"step": 4})
        recorder.complete({"nodes_run": 4})
        expect_finished(page, "completed", "Completed in")

    for number in range(1, 5):
        expect(node(page, f"n{number}")).to_have_count(1)
        element = expect_node(page, f"n{number}", "completed", "Completed")
        assert shown_outputs(element) == {"step": number}
    expect(page.locator("[data-node-id]")).to_have_count(4)
    expect(page.locator("progress")).to_have_attribute("value", "100")
    assert shown_outputs(page, "execution-outputs") == {"nodes_run": 4}


# A page on another origin, with a stream token.


def mint_url(server, execution_id, raw_key):
    """What the integrator's backend does: mint a stream token with its key."""
    response = httpx.post(
        f"{server.url}/api/v1/executions/{execution_id}/stream-token",
        headers={"X-API-Key": raw_key},
        timeout=TIMEOUT_MS / 1000,
    )
    assert response.status_code == 201, response.text
    url = response.json()["data"]["url"]
    assert url.startswith(f"{server.url}{events_url(execution_id)}?token=")
    return url


def received_count(page, count):
    page.wait_for_function("count => window.received.length >= count", arg=count)


def test_a_page_on_another_origin_streams_with_a_stream_token_through_a_native_event_source(
    server, other_origin, page, user, make_key
):
    _, raw_key = make_key(scopes=["executions:read"])
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_demo", total_nodes=1)
    recorder.start()
    url = mint_url(server, recorder.execution_id, raw_key)
    page.goto(other_origin)
    assert page.evaluate("location.origin") == other_origin != server.url
    page.evaluate("url => openStream(url)", url)
    received_count(page, 1)  # the history: execution:started

    recorder.start_node("fetch", "http")
    received_count(page, 2)
    recorder.complete_node("fetch", {"status": 200})  # node:completed, then progress
    received_count(page, 4)
    recorder.complete({"done": True})
    received_count(page, 5)
    assert page.evaluate("window.received") == logged_events(recorder.execution_id)

    # The server ended the stream at the terminal event; the browser's reconnect, with the
    # terminal id as Last-Event-ID, is answered 204, which closes the EventSource for good.
    page.wait_for_function(
        "window.source.readyState === EventSource.CLOSED", timeout=RETRY_MS + TIMEOUT_MS
    )
    assert page.evaluate("window.received") == logged_events(recorder.execution_id)
    assert page.evaluate("window.connections") == 1


def test_a_page_on_another_origin_is_refused_an_expired_token_and_a_revoked_keys_token(
    server, other_origin, page, user, make_key, monkeypatch
):
    key, raw_key = make_key()
    execution_id = completed_run(user)
    fresh, _ = tokens.mint(execution_id, key)
    with monkeypatch.context() as patch:
        minted_at = signing.time.time() - 301  # the default life is 300 s
        patch.setattr(signing.time, "time", lambda: minted_at)
        expired, _ = tokens.mint(execution_id, key)
    events = f"{server.url}{events_url(execution_id)}?token="
    page.goto(other_origin)

    # Minted in this process: the server checks them with the same SECRET_KEY, so the
    # fresh one streams, and the old one is expired, not invalid.
    streamed = page.evaluate(FETCH, events + fresh)
    assert (streamed["status"], streamed["type"]) == (200, "text/event-stream")
    assert page.evaluate(FETCH, events + expired) == {
        "status": 401,
        "type": "application/json",
        "code": "expired_stream_token",
    }
    assert page.evaluate(FETCH, events + fresh[:-2])["code"] == "invalid_stream_token"

    url = mint_url(server, execution_id, raw_key)
    assert page.evaluate(FETCH, url)["status"] == 200
    key.revoke()
    assert page.evaluate(FETCH, url) == {
        "status": 401,
        "type": "application/json",
        "code": "revoked_api_key",
    }


def test_a_tokens_open_stream_ends_within_a_keepalive_of_its_keys_revocation(
    server, other_origin, page, user, make_key
):
    key, raw_key = make_key()
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_demo", total_nodes=2)
    recorder.start()
    url = mint_url(server, recorder.execution_id, raw_key)
    page.goto(other_origin)
    page.evaluate("url => openStream(url)", url)
    received_count(page, 1)
    recorder.progress(completed_nodes=1)
    received_count(page, 2)
    assert page.evaluate("window.errors") == []

    revoked_at = page.evaluate("performance.now()")
    key.revoke()
    # The stream ends (an error event, the EventSource reconnecting); the reconnect is
    # refused (401 revoked_api_key), which closes the EventSource.
    page.wait_for_function("window.errors.length >= 1")
    page.wait_for_function(
        "window.source.readyState === EventSource.CLOSED", timeout=RETRY_MS + TIMEOUT_MS
    )
    ended, *_, closed = page.evaluate("window.errors")
    assert ended["readyState"] == 0  # CONNECTING: the stream ended, the browser retries
    assert ended["at"] - revoked_at <= 3 * KEEPALIVE * 1000, ended["at"] - revoked_at
    assert closed["readyState"] == 2
    assert closed["at"] - revoked_at <= RETRY_MS + 3 * KEEPALIVE * 1000
    assert page.evaluate("window.connections") == 1
    assert [event[0] for event in page.evaluate("window.received")] == [1, 2]


# What a user may not see, and what the page never runs.


def test_another_users_execution_is_a_404_page_and_a_404_stream(server, page, user, other_user):
    own = completed_run(user)
    others = completed_run(other_user)
    log_in(page, server, "alice", PASSWORDS["alice"], page_path(own))

    response = page.goto(server.url + page_path(others))
    assert response.status == 404
    expect(page.locator("#execution")).to_have_count(0)
    assert page.evaluate(FETCH, events_url(others)) == {
        "status": 404,
        "type": "application/json",
        "code": "resource_not_found",
    }
    # The same session streams its own user's execution.
    streamed = page.evaluate(FETCH, events_url(own))
    assert (streamed["status"], streamed["type"]) == (200, "text/event-stream")


def assert_markup_shown_as_text(page, element):
    outputs = element.locator("[data-role='outputs']")
    assert shown_outputs(element) == MARKUP
    for text in MARKUP.values():
        expect(outputs.locator("pre")).to_contain_text(text, use_inner_text=True)
    assert_nothing_ran(page)


def assert_nothing_ran(page):
    assert page.evaluate("typeof window.pwned") == "undefined"
    expect(page.locator("img[src='x']")).to_have_count(0)
    expect(page.locator("#execution script")).to_have_count(0)


def test_markup_in_outputs_and_errors_is_shown_as_text_on_first_render_and_live(server, page, user):
    rendered = ExecutionRecorder.create(owner=user, workflow_id="wf_demo")
    rendered.start()
    rendered.start_node("render", "transform")
    rendered.complete_node("render", MARKUP)
    rendered.complete(MARKUP)
    log_in(page, server, "alice", PASSWORDS["alice"], page_path(rendered.execution_id))
    expect(page.locator("#execution")).to_have_attribute("data-status", "completed")
    assert_markup_shown_as_text(page, node(page, "render"))
    assert shown_outputs(page, "execution-outputs") == MARKUP

    live = ExecutionRecorder.create(owner=user, workflow_id="wf_demo")
    live.start()
    page.goto(server.url + page_path(live.execution_id))
    expect(stream_state(page)).to_have_attribute("data-stream-state", "live")
    live.start_node("render", "transform")
    live.complete_node("render", MARKUP)
    assert_markup_shown_as_text(page, expect_node(page, "render", "completed", "Completed"))
    live.start_node("notify", "http")
    live.fail_node("notify", MARKUP["image"])
    notify = expect_node(page, "notify", "failed", "Failed")
    expect(notify.locator("[data-role='error']")).to_have_text(f"Error: {MARKUP['image']}")
    live.fail(MARKUP["html"], node_id="notify")
    expect_finished(page, "failed", "Failed after")
    expect(page.locator("[data-role='execution-error']")).to_have_text(f"Error: {MARKUP['html']}")
    assert_nothing_ran(page)
