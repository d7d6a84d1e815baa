"""The isolation matrix: every endpoint of the contract (``tests.contract.CONTRACT``, the
event stream included) and the live pages, by every way in, in every case a caller may be
in, answers exactly what ../shared/spec/api.md says; and no way in tells another owner's
execution from a missing one (same status, same body but for the id, same headers but for
the request id).

Each cell is its own test. REST calls and pages go through Django's test ``Client``, in the
test's transaction; the stream through ``AsyncClient``, whose database work runs on pool
threads that must see the test's rows (``transaction=True``).
"""

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from asgiref.sync import async_to_sync
from django.core import signing
from django.test import AsyncClient, Client
from django.utils import timezone

from apikeys import keys, ratelimit
from apikeys.models import APIKey
from apikeys.scopes import all_scopes
from executions.models import Execution, Status
from executions.recorder import ExecutionRecorder
from tests.contract import CONTRACT
from tests.live_server import expected_body
from tests.runs import completed_run
from tests.streams import get
from tests.test_apikeys_auth import WWW_AUTHENTICATE, assert_auth_error, assert_error

EVENTS = ("get", "/api/v1/executions/{execution_id}/events")
REST = {endpoint: scopes for endpoint, scopes in CONTRACT.items() if endpoint != EVENTS}
SUCCESS = {
    ("post", "/api/v1/workflows/{workflow_id}/execute"): 202,
    ("post", "/api/v1/executions/{execution_id}/stream-token"): 201,
}
LOGIN_URL = "/accounts/login/"
PAGES = {
    "list": ("get", "/executions/"),
    "detail": ("get", "/executions/{execution_id}/"),
    "cancel": ("post", "/executions/{execution_id}/cancel"),
}
MALFORMED_KEY = "fm_live_tooshort"
# The ways a key travels, as request headers.
KEY_WAYS = {
    "X-API-Key": lambda raw: {"X-API-Key": raw},
    "Bearer": lambda raw: {"Authorization": f"Bearer {raw}"},
}
# The cases of a key that may not see what it asks for: (the key's mode, the execution
# asked for). Keys are alice's: "own" is her live execution, "own test" her test-mode
# one, "theirs" bob's.
HIDDEN_CASES = {
    "other owner": ("live", "theirs"),
    "test key on a live execution": ("test", "own"),
    "live key on a test execution": ("live", "own test"),
}
AUTH_CASES = {
    "revoked": "revoked_api_key",
    "expired": "expired_api_key",
    "unknown": "invalid_api_key",
    "malformed": "invalid_api_key",
}


def endpoint_id(endpoint):
    method, path = endpoint
    return f"{method.upper()} {path}"


def has_execution_id(endpoint):
    return "{execution_id}" in endpoint[1]


# The world each cell runs in --------------------------------------------------------------


def new_execution(owner, mode="live", finished=False):
    """A pending execution (a finished one, with its whole log, for the stream's cells)."""
    if finished:
        execution_id = completed_run(owner)
        Execution.objects.filter(pk=execution_id).update(mode=mode)
        return execution_id
    return ExecutionRecorder.create(owner=owner, workflow_id="wf_demo", mode=mode).execution_id


def execution_of(kind, user, other_user, finished=False):
    owner, mode = {
        "own": (user, "live"),
        "own test": (user, "test"),
        "theirs": (other_user, "live"),
    }[kind]
    return new_execution(owner, mode, finished)


def key_for(case, make_key):
    """The raw key a cell sends: alice's, full access, live unless the case says."""
    if case in HIDDEN_CASES:
        return make_key(mode=HIDDEN_CASES[case][0])[1]
    if case == "revoked":
        key, raw = make_key()
        key.revoke()
        return raw
    if case == "expired":
        return make_key(expires_at=timezone.now() - timedelta(seconds=1))[1]
    if case == "unknown":
        make_key()
        return keys.generate("live")
    if case == "malformed":
        return MALFORMED_KEY
    return make_key()[1]


def path_of(endpoint_path, execution_id):
    return endpoint_path.format(workflow_id="wf_demo", execution_id=execution_id)


def send(client, method, path, headers):
    if method == "get":
        return client.get(path, headers=headers)
    body = {"inputs": {}} if path.endswith("/execute") else {}
    return client.post(path, json.dumps(body), content_type="application/json", headers=headers)


def stream(execution_id, headers=None, client=None, query=""):
    """GET an execution's (async) event stream; return the response, its body read to the
    end as ``response.body``."""

    async def fetch():
        response = await get(execution_id, query=query, client=client, **(headers or {}))
        if response.streaming:
            response.body = b"".join([chunk async for chunk in response.streaming_content])
        return response

    return async_to_sync(fetch)()


def state():
    """Every execution and its status: what a refused request must leave as it was."""
    return sorted(Execution.objects.values_list("pk", "status"))


def assert_not_found(response, execution_id):
    assert_error(response, 404, "resource_not_found", {"resource": "execution", "id": execution_id})


def assert_insufficient_scope(response, required, missing):
    scopes = [scope for scope in all_scopes() if scope != missing]
    assert_error(
        response,
        403,
        "insufficient_scope",
        {"required_scopes": required, "missing_scopes": [missing], "your_scopes": scopes},
    )


# REST endpoints, by API key in either header -----------------------------------------------


def rest_cells():
    for endpoint, required in REST.items():
        for way in KEY_WAYS:
            cases = ["own", *AUTH_CASES, *(f"missing {scope}" for scope in required)]
            if has_execution_id(endpoint) or endpoint == ("get", "/api/v1/executions"):
                cases += list(HIDDEN_CASES)
            for case in cases:
                yield pytest.param(endpoint, way, case, id=f"{endpoint_id(endpoint)}-{way}-{case}")


@pytest.mark.django_db
@pytest.mark.parametrize(("endpoint", "way", "case"), list(rest_cells()))
def test_a_rest_endpoint_answers_each_key_exactly_as_the_contract_says(
    client, make_key, user, other_user, endpoint, way, case
):
    method, endpoint_path = endpoint
    required = REST[endpoint]
    if case.startswith("missing "):
        missing = case.removeprefix("missing ")
        raw = make_key(scopes=[scope for scope in all_scopes() if scope != missing])[1]
    else:
        raw = key_for(case, make_key)
    target = execution_of(HIDDEN_CASES.get(case, (None, "own"))[1], user, other_user)
    before = state()

    response = send(client, method, path_of(endpoint_path, target), KEY_WAYS[way](raw))

    if case == "own":
        assert response.status_code == SUCCESS.get(endpoint, 200), response.content
        return
    if case in HIDDEN_CASES and not has_execution_id(endpoint):
        assert response.status_code == 200
        body = response.json()
        assert (body["data"], body["pagination"]["total_count"]) == ([], 0)
    elif case in HIDDEN_CASES:
        assert_not_found(response, target)
    elif case in AUTH_CASES:
        assert_auth_error(response, AUTH_CASES[case])
    else:
        assert_insufficient_scope(response, required, case.removeprefix("missing "))
    assert state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("way", ["no credential", "session"])
@pytest.mark.parametrize("endpoint", list(REST), ids=endpoint_id)
def test_a_rest_endpoint_without_a_key_is_invalid_api_key_even_for_a_logged_in_user(
    client, user, endpoint, way
):
    if way == "session":
        client.force_login(user)
    target = new_execution(user)
    before = state()

    response = send(client, endpoint[0], path_of(endpoint[1], target), {})

    assert_auth_error(response, "invalid_api_key")
    assert state() == before


# The event stream: a key in either header, a session, a stream token ----------------------


def mint(raw, execution_id):
    response = Client().post(
        f"/api/v1/executions/{execution_id}/stream-token", headers={"X-API-Key": raw}
    )
    assert response.status_code == 201, response.content
    return response.json()["data"]["token"]


def assert_streamed(response, execution_id):
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response.body == expected_body(execution_id, "completed")


def assert_stream_error(response, status, code, details=None):
    assert not response.streaming
    if status == 401:
        assert response["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert_error(response, status, code, details)


STREAM_KEY_CASES = ["own", *AUTH_CASES, "missing executions:read", *HIDDEN_CASES]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", STREAM_KEY_CASES)
@pytest.mark.parametrize("way", list(KEY_WAYS))
def test_the_stream_answers_each_key_exactly_as_the_contract_says(
    make_key, user, other_user, way, case
):
    if case == "missing executions:read":
        raw = make_key(scopes=[scope for scope in all_scopes() if scope != "executions:read"])[1]
    else:
        raw = key_for(case, make_key)
    target = execution_of(HIDDEN_CASES.get(case, (None, "own"))[1], user, other_user, True)

    response = stream(target, KEY_WAYS[way](raw))

    if case == "own":
        assert_streamed(response, target)
    elif case in HIDDEN_CASES:
        assert_not_found(response, target)
    elif case in AUTH_CASES:
        assert_stream_error(response, 401, AUTH_CASES[case])
    else:
        assert_insufficient_scope(response, ["executions:read"], "executions:read")


def deactivate(user):
    user.is_active = False
    user.save()


def change_password(user):
    user.set_password("a-new-password-2")
    user.save()


# Each case of a session: (whose execution, what happens to the logged-in user, answer).
SESSION_CASES = {
    "own": ("own", None, 200),
    "own test execution": ("own test", None, 200),
    "other owner": ("theirs", None, 404),
    "staff, other owner": ("theirs", "staff", 200),
    "deactivated": ("own", deactivate, 401),
    "password changed": ("own", change_password, 401),
    "malformed cookie": ("own", "malformed", 401),
    "no credential": ("own", "logged out", 401),
}


def session_client(client, user, change):
    """Log ``client`` in as ``user``, then apply the case's ``change``."""
    if change == "staff":
        user.is_staff = True
        user.save()
    if change == "logged out":
        return client
    if change == "malformed":
        client.cookies["sessionid"] = "not-a-session-" + "x" * 20
        return client
    client.force_login(user)
    if callable(change):
        change(user)
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", list(SESSION_CASES))
def test_the_stream_answers_each_session_exactly_as_the_contract_says(user, other_user, case):
    kind, change, status = SESSION_CASES[case]
    target = execution_of(kind, user, other_user, True)
    client = session_client(AsyncClient(), user, change)

    response = stream(target, client=client)

    if status == 200:
        assert_streamed(response, target)
    elif status == 404:
        assert_not_found(response, target)
    else:
        assert_stream_error(response, 401, "invalid_api_key")


def expired_token(raw, execution_id, monkeypatch):
    minted_at = signing.time.time() - 301
    with monkeypatch.context() as patch:
        patch.setattr(signing.time, "time", lambda: minted_at)
        return mint(raw, execution_id)


# Each case of a stream token: (the mode of the minting key, the execution it is minted for,
# the execution streamed, the answer).
TOKEN_CASES = {
    "own": ("live", "own", "own", (200, None)),
    "other owner": ("live", "own", "theirs", (401, "invalid_stream_token")),
    "test key's token on a live execution": ("test", "own test", "own", None),
    "live key's token on a test execution": ("live", "own", "own test", None),
    "revoked key": ("live", "own", "own", (401, "revoked_api_key")),
    "expired key": ("live", "own", "own", (401, "expired_api_key")),
    "expired token": ("live", "own", "own", (401, "expired_stream_token")),
    "key lost executions:read": ("live", "own", "own", (403, "insufficient_scope")),
    "malformed": ("live", "own", "own", (401, "invalid_stream_token")),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_the_stream_answers_each_stream_token_exactly_as_the_contract_says(
    make_key, user, other_user, monkeypatch, case
):
    mode, minted_for, streamed, answer = TOKEN_CASES[case]
    status, code = answer or (401, "invalid_stream_token")
    key, raw = make_key(mode=mode)
    own = {"own": new_execution(user, "live", True), "own test": new_execution(user, "test", True)}
    executions = {**own, "theirs": new_execution(other_user, "live", True)}
    if case == "expired token":
        token = expired_token(raw, executions[minted_for], monkeypatch)
    else:
        token = mint(raw, executions[minted_for])
    if case == "revoked key":
        key.revoke()
    elif case == "expired key":
        APIKey.objects.filter(pk=key.pk).update(expires_at=timezone.now())
    elif case == "key lost executions:read":
        APIKey.objects.filter(pk=key.pk).update(scopes=["workflows:read"])
    elif case == "malformed":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    target = executions[streamed]

    response = stream(target, query=f"?token={token}")

    if status == 200:
        assert_streamed(response, target)
        return
    details = None
    if status == 403:
        details = {
            "required_scopes": ["executions:read"],
            "missing_scopes": ["executions:read"],
            "your_scopes": ["workflows:read"],
        }
    assert_stream_error(response, status, code, details)
    assert token not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_stream_without_any_credential_is_invalid_api_key(user):
    response = stream(new_execution(user, finished=True))

    assert_stream_error(response, 401, "invalid_api_key")


# The live pages, by session -----------------------------------------------------------------


def page_cells():
    for page in PAGES:
        for case in [*SESSION_CASES, "an API key only"]:
            yield pytest.param(page, case, id=f"{page}-{case}")


@pytest.mark.django_db
@pytest.mark.parametrize(("page", "case"), list(page_cells()))
def test_a_live_page_answers_each_session_exactly_as_the_contract_says(
    client, make_key, user, other_user, page, case
):
    method, page_path = PAGES[page]
    if case == "an API key only":
        kind, change, status, headers = "own", "logged out", 302, {"X-API-Key": make_key()[1]}
    else:
        (kind, change, status), headers = SESSION_CASES[case], {}
    status = 302 if status == 401 else status  # a page sends a stranger to log in
    target = execution_of(kind, user, other_user)
    client = session_client(client, user, change)
    before = state()
    detail = PAGES["detail"][1].format(execution_id=target)

    response = send(client, method, page_path.format(execution_id=target), headers)

    if status == 302:
        next_url = detail if page == "cancel" else page_path.format(execution_id=target)
        assert response.status_code == 302
        assert response["Location"] == f"{LOGIN_URL}?next={next_url}"
        assert state() == before
    elif status == 404 and page == "list":
        assert response.status_code == 200
        assert response.context["executions"] == []
        assert target not in response.content.decode()
    elif status == 404:
        assert response.status_code == 404
        assert response["Content-Type"].startswith("text/html")
        assert state() == before
    elif page == "list":
        assert response.status_code == 200
        listed = [row["execution"].pk for row in response.context["executions"]]
        assert listed == [target]
    elif page == "detail":
        assert response.status_code == 200
        assert f'data-execution-id="{target}"' in response.content.decode()
    else:
        assert response.status_code == 302
        assert response["Location"] == detail
        assert Execution.objects.get(pk=target).status == Status.CANCELLED


@pytest.mark.django_db
def test_the_list_page_shows_no_one_elses_executions(client, user, other_user):
    theirs = new_execution(other_user)
    mine = [new_execution(user), new_execution(user, "test")]
    client.force_login(user)

    response = client.get(PAGES["list"][1])

    listed = {row["execution"].pk for row in response.context["executions"]}
    assert listed == set(mine)
    assert theirs not in response.content.decode()


# Another owner's execution is a missing one, by every way in ------------------------------


def like(execution_id):
    """A missing id of the same shape and length as ``execution_id``."""
    return execution_id[:-4] + ("AAAA" if not execution_id.endswith("AAAA") else "BBBB")


def comparable(response, execution_id):
    """What a caller sees of ``response``, with the id it asked for blanked out: status,
    headers but for the request id, and the body (the error's keys, code, message and
    details for JSON, the page for HTML)."""
    headers = {
        name: value.replace(execution_id, "<id>")
        for name, value in response.headers.items()
        if name != "X-Request-ID"
    }
    if response["Content-Type"] == "application/json":
        body = response.json()
        body = {"keys": sorted(body), "error": body["error"], "meta": sorted(body["meta"])}
    else:
        body = response.content.decode()
    return (
        response.status_code,
        headers,
        json.dumps(body, sort_keys=True).replace(execution_id, "<id>"),
    )


@pytest.fixture
def frozen_rate_limits(monkeypatch):
    """Count rate limits at one instant, so that two keys' X-RateLimit-* headers agree."""
    now = ratelimit.time.time()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: now))


def leak_cells():
    for endpoint in [*filter(has_execution_id, REST), EVENTS]:
        for way in KEY_WAYS:
            for case in HIDDEN_CASES:
                yield pytest.param(endpoint, way, case, id=f"{endpoint_id(endpoint)}-{way}-{case}")


def assert_indistinguishable(hidden, missing, hidden_id, missing_id):
    assert hidden.status_code in {401, 404}
    assert comparable(hidden, hidden_id) == comparable(missing, missing_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("endpoint", "way", "case"), list(leak_cells()))
def test_a_key_cannot_tell_an_execution_it_may_not_see_from_a_missing_one(
    make_key, user, other_user, frozen_rate_limits, endpoint, way, case
):
    mode, kind = HIDDEN_CASES[case]
    hidden_id = execution_of(kind, user, other_user, finished=endpoint == EVENTS)
    missing_id = like(hidden_id)
    before = state()
    # Two keys alike, one a request, so that their rate-limit headers agree.
    answers = []
    for execution_id in (hidden_id, missing_id):
        headers = KEY_WAYS[way](make_key(mode=mode)[1])
        if endpoint == EVENTS:
            answers.append(stream(execution_id, headers))
        else:
            path = path_of(endpoint[1], execution_id)
            answers.append(send(Client(), endpoint[0], path, headers))

    assert_not_found(answers[0], hidden_id)
    assert_indistinguishable(*answers, hidden_id, missing_id)
    assert state() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("way", ["session", "stream token"])
def test_a_browser_cannot_tell_a_stream_it_may_not_see_from_a_missing_one(
    make_key, user, other_user, way
):
    hidden_id = new_execution(other_user, finished=True)
    missing_id = like(hidden_id)
    answers = []
    for execution_id in (hidden_id, missing_id):
        if way == "session":
            client = AsyncClient()
            client.force_login(user)
            answers.append(stream(execution_id, client=client))
        else:
            token = mint(make_key()[1], new_execution(user, finished=True))
            answers.append(stream(execution_id, query=f"?token={token}"))

    assert answers[0].status_code == (404 if way == "session" else 401)
    assert_indistinguishable(*answers, hidden_id, missing_id)


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["detail", "cancel"])
def test_a_user_cannot_tell_a_page_it_may_not_see_from_a_missing_one(
    client, user, other_user, page
):
    method, page_path = PAGES[page]
    hidden_id = new_execution(other_user)
    missing_id = like(hidden_id)
    client.force_login(user)
    before = state()

    hidden, missing = (
        send(client, method, page_path.format(execution_id=execution_id), {})
        for execution_id in (hidden_id, missing_id)
    )

    assert hidden.status_code == 404
    assert_indistinguishable(hidden, missing, hidden_id, missing_id)
    assert state() == before
