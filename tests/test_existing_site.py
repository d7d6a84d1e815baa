"""The apps dropped into an existing DRF site (``tests.existing_site``): its own endpoints
keep authenticating and answering their own way, ours answer as the contract says under
its mount point, and the stream works there, through a real uvicorn process on
pytest-django's test database and the real Redis.

The one table the site has and the demo site lacks, ``rest_framework.authtoken``'s, is made
in the test database by the site's own ``manage.py migrate``, once for the module, and
taken out after it (``migrate authtoken zero``), so the modules that follow find the
database the demo's migrations made. The tests make users, keys and executions through
the ORM, and DRF tokens with the site's own ``manage.py drf_create_token`` (this process
cannot load a model of an app it does not install).

While that table exists, emptying the database after each test must truncate it too:
PostgreSQL refuses to TRUNCATE ``auth_user`` while a table left out of the statement
has a foreign key to it. The tests name their ``available_apps``, which makes Django's
flush ``TRUNCATE ... CASCADE``; as Django then skips ``post_migrate`` after the flush,
the module fixture emits it once at the end, so the next module finds the content types
and permissions a flush normally leaves.
"""

import subprocess
import sys

import httpx
import pytest
import yaml
from django.core.management.sql import emit_post_migrate_signal
from django.test import override_settings
from drf_spectacular.validation import validate_schema

from executions.recorder import ExecutionRecorder
from executions.schema import TITLE
from tests.contract import CONTRACT, EXECUTION_FIELDS, NODE_FIELDS, WORKFLOW_FIELDS
from tests.live_server import (
    BASE_DIR,
    LiveStream,
    events_url,
    expected_body,
    frames_of,
    ids_of,
    live_server,
    process_env,
    without_keepalives,
)
from tests.test_api import assert_page, assert_success
from tests.test_apikeys_auth import assert_auth_error, assert_error

# The demo's apps this module's tests write to through the server, the worker or the ORM.
AVAILABLE_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_tasks_db",
    "apikeys",
    "executions",
]
pytestmark = pytest.mark.django_db(transaction=True, available_apps=AVAILABLE_APPS)

SETTINGS = "tests.existing_site.settings"
APPLICATION = "tests.existing_site.asgi:application"
MOUNT = "/integrations/flows/"
WORKFLOW = "wf_sync_accounts"
USERS = "/api/users/"
# How long a test waits for something that must happen; far above what it takes.
TIMEOUT = 20.0
# The site keeps Django's default password hashers; the tests' settings use MD5.
SITE_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
PASSWORD = "alice-site-password-1"
NOT_AUTHENTICATED = "Authentication credentials were not provided."


def manage(*args):
    """Run one of the site's ``manage.py`` commands on the test database; return its
    output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=process_env(DJANGO_SETTINGS_MODULE=SETTINGS),
        capture_output=True,
        text=True,
        timeout=3 * TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def site_tables(django_db_setup, django_db_blocker):
    manage("migrate", "--verbosity", "0")
    try:
        yield
    finally:
        manage("migrate", "authtoken", "zero", "--verbosity", "0")
        with django_db_blocker.unblock():
            emit_post_migrate_signal(verbosity=0, interactive=False, db="default")


@pytest.fixture(scope="module")
def site(site_tables):
    with live_server("uvicorn", APPLICATION, DJANGO_SETTINGS_MODULE=SETTINGS) as server:
        yield server


@pytest.fixture
def http(site):
    with httpx.Client(base_url=site.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def raw_key(make_key):
    return make_key()[1]


@pytest.fixture
def drf_token(site_tables, user):
    """A DRF token of ``user``'s, the site's own kind of credential."""
    output = manage("drf_create_token", user.username)  # "Generated token <key> for user <name>"
    return output.split()[2]


@pytest.fixture
def logged_in(http, user):
    """``http``, logged in as ``user`` through the site's own login form."""
    with override_settings(PASSWORD_HASHERS=SITE_HASHERS):
        user.set_password(PASSWORD)
        user.save()
    http.get("/api-auth/login/")
    response = http.post(
        "/api-auth/login/",
        data={
            "username": user.username,
            "password": PASSWORD,
            "csrfmiddlewaretoken": http.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text
    assert "sessionid" in http.cookies
    return http


class Answer:
    """An httpx response, read as the contract's assertions read a Django test response."""

    def __init__(self, response):
        self.status_code, self.content = response.status_code, response.content
        self.headers, self.json = response.headers, response.json

    def __getitem__(self, name):
        return self.headers[name]


def assert_site_error(response, status, detail):
    """Assert ``response`` is the site's own error format, not the contract's envelope."""
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"errors": [{"detail": detail, "status": status}]}


def api(path):
    return MOUNT + path


# The site's own endpoints ----------------------------------------------------------------


def test_its_endpoint_refuses_a_request_without_credentials_in_its_own_format(http):
    response = http.get(USERS)

    assert_site_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["WWW-Authenticate"] == "Token"


def test_its_endpoint_authenticates_with_its_drf_token_and_paginates_its_own_way(
    http, user, other_user, django_user_model, drf_token
):
    django_user_model.objects.create_user("carol")

    response = http.get(USERS, headers={"Authorization": f"Token {drf_token}"})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 3
    assert [item["username"] for item in body["results"]] == ["alice", "bob"]
    assert set(body["results"][0]) == {"id", "username"}
    assert "offset=2" in body["next"]
    assert body["previous"] is None


def test_its_endpoint_refuses_a_wrong_drf_token_in_its_own_format(http):
    response = http.get(USERS, headers={"Authorization": "Token 0123456789abcdef"})

    assert_site_error(response, 401, "Invalid token.")


def test_its_endpoint_authenticates_with_a_session_login(logged_in):
    response = logged_in.get(USERS)

    assert response.status_code == 200
    assert [item["username"] for item in response.json()["results"]] == ["alice"]


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
def test_an_api_key_does_not_authenticate_on_its_endpoint(http, raw_key, header):
    value = raw_key if header == "X-API-Key" else f"Bearer {raw_key}"

    response = http.get(USERS, headers={header: value})

    assert_site_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["WWW-Authenticate"] == "Token"


def test_its_async_view_answers(http, user):
    response = http.get("/status/")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "users": 1}


@pytest.mark.parametrize("path", ["/nowhere/", "/integrations/elsewhere", "/api/nothing/"])
def test_an_unknown_path_outside_our_mount_is_its_own_404(http, path):
    response = http.get(path)

    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<h1>Not Found</h1>" in response.text


# Our endpoints under its mount -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "workflows"),
        ("get", f"workflows/{WORKFLOW}"),
        ("post", f"workflows/{WORKFLOW}/execute"),
        ("get", "executions"),
        ("get", "executions/exec_missing/events"),
    ],
)
def test_our_endpoints_refuse_a_request_without_a_key_as_the_contract_says(http, method, path):
    response = http.request(method, api(path))

    assert_auth_error(Answer(response), "invalid_api_key")


def test_its_drf_token_does_not_open_our_endpoints(http, drf_token):
    response = http.get(api("workflows"), headers={"Authorization": f"Token {drf_token}"})

    assert_auth_error(Answer(response), "invalid_api_key")


def test_its_session_login_does_not_open_our_endpoints(logged_in):
    response = logged_in.get(api("workflows"))

    assert_auth_error(Answer(response), "invalid_api_key")


def test_a_key_without_the_scope_is_insufficient_scope_with_details(http, make_key):
    _, raw = make_key(scopes=["executions:read"])

    response = http.get(api("workflows"), headers={"X-API-Key": raw})

    assert_error(
        Answer(response),
        403,
        "insufficient_scope",
        details={
            "required_scopes": ["workflows:read"],
            "missing_scopes": ["workflows:read"],
            "your_scopes": ["executions:read"],
        },
    )


def test_the_demo_sites_workflow_is_not_found_here(http, raw_key):
    response = http.get(api("workflows/wf_demo"), headers={"Authorization": f"Bearer {raw_key}"})

    assert_error(
        Answer(response),
        404,
        "resource_not_found",
        details={"resource": "workflow", "id": "wf_demo"},
    )


def test_an_unknown_path_under_our_mount_is_our_json_404(http):
    response = http.get(api("nope/here"))

    assert_error(
        Answer(response),
        404,
        "resource_not_found",
        details={"resource": "endpoint", "id": api("nope/here")},
    )


def test_workflows_list_and_get_answer_the_sites_workflow_in_envelopes(http, raw_key):
    headers = {"X-API-Key": raw_key}

    listed = http.get(api("workflows"), headers=headers)
    one = http.get(api(f"workflows/{WORKFLOW}"), headers=headers)

    data, pagination = assert_page(Answer(listed))
    assert [workflow["id"] for workflow in data] == [WORKFLOW]
    assert pagination == {
        "page": 1,
        "per_page": 20,
        "total_count": 1,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
        "has_more": False,
    }
    workflow = assert_success(Answer(one))
    assert set(workflow) == WORKFLOW_FIELDS
    assert workflow["inputs"]["accounts"]["type"] == "integer"
    for response in (listed, one):
        assert response.headers["X-RateLimit-Limit"] == "60"
        assert 0 <= int(response.headers["X-RateLimit-Remaining"]) < 60
        assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_executions_list_and_get_answer_in_envelopes(http, user, raw_key):
    recorder = ExecutionRecorder.create(owner=user, workflow_id=WORKFLOW, total_nodes=1)
    recorder.start()
    with recorder.node("fetch", "http") as node:
        node.outputs = {"fetched": 1}
    recorder.complete({"synced": 1})
    headers = {"X-API-Key": raw_key}

    data, pagination = assert_page(Answer(http.get(api("executions"), headers=headers)))
    execution = assert_success(
        Answer(http.get(api(f"executions/{recorder.execution_id}"), headers=headers))
    )

    assert [item["id"] for item in data] == [recorder.execution_id]
    assert pagination["total_count"] == 1
    assert set(execution) == EXECUTION_FIELDS
    assert execution["status"] == "completed"
    assert execution["outputs"] == {"synced": 1}
    assert [set(run) for run in execution["nodes"]] == [NODE_FIELDS]


# The stream under its mount --------------------------------------------------------------


def open_stream(http, execution_id, raw, **headers):
    headers = {"X-API-Key": raw, **headers}
    return http.stream("GET", events_url(execution_id, MOUNT), headers=headers)


def test_execute_answers_202_and_the_sites_worker_runs_it_to_the_end_of_the_stream(http, raw_key):
    response = http.post(
        api(f"workflows/{WORKFLOW}/execute"),
        json={"inputs": {"accounts": 3}},
        headers={"Authorization": f"Bearer {raw_key}"},
    )
    data = assert_success(Answer(response), 202)
    execution_id = data["execution_id"]
    assert data == {
        "execution_id": execution_id,
        "workflow_id": WORKFLOW,
        "status": "pending",
        "inputs": {"accounts": 3},
    }

    with open_stream(http, execution_id, raw_key) as streamed:
        stream = LiveStream(streamed)
        stream.read_until(lambda body: b"event: connected" in body)
        manage("db_worker", "--batch", "--no-startup-delay", "--no-reload")
        body = stream.read_until()

    assert streamed.status_code == 200
    assert streamed.headers["Content-Type"] == "text/event-stream"
    assert frames_of(body)[-1].split(b"\n")[1] == b"event: execution:completed"
    assert without_keepalives(body) == expected_body(execution_id, "pending")
    finished = http.get(api(f"executions/{execution_id}"), headers={"X-API-Key": raw_key})
    assert assert_success(Answer(finished))["outputs"] == {"synced": 3}


def test_events_recorded_here_stream_through_the_site_and_resume_after_last_event_id(
    http, user, raw_key
):
    recorder = ExecutionRecorder.create(owner=user, workflow_id=WORKFLOW, total_nodes=1)
    recorder.start()

    with open_stream(http, recorder.execution_id, raw_key) as streamed:
        stream = LiveStream(streamed)
        stream.read_until(lambda body: ids_of(body) == [1])
        with recorder.node("fetch", "http") as node:
            node.outputs = {"fetched": 1}
        recorder.complete({"synced": 1})
        live = stream.read_until()
    last = recorder.execution.last_seq

    with open_stream(http, recorder.execution_id, raw_key, **{"Last-Event-ID": "2"}) as streamed:
        resumed = LiveStream(streamed).read_until()
    finished = http.get(
        events_url(recorder.execution_id, MOUNT),
        headers={"X-API-Key": raw_key, "Last-Event-ID": str(last)},
    )

    assert without_keepalives(live) == expected_body(recorder.execution_id, "running")
    assert ids_of(live) == list(range(1, last + 1))
    assert without_keepalives(resumed) == expected_body(recorder.execution_id, "completed", 2)
    assert finished.status_code == 204


# Schemas and checks ----------------------------------------------------------------------


def test_its_own_schema_lists_its_endpoints_under_its_own_title(http, drf_token):
    response = http.get(
        "/api/schema/", params={"format": "json"}, headers={"Authorization": f"Token {drf_token}"}
    )

    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Acme internal API"
    assert "get" in schema["paths"][USERS]
    validate_schema(schema)


def test_its_schema_generates_without_warnings_with_our_apps_installed():
    schema = yaml.safe_load(manage("spectacular", "--validate", "--fail-on-warn"))

    assert schema["info"]["title"] == "Acme internal API"
    assert "get" in schema["paths"][USERS]


def test_our_schema_under_its_mount_is_exactly_the_contract(http):
    response = http.get(api("schema/"), params={"format": "json"})

    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    assert schema["info"]["title"] == TITLE
    expected = {
        (method, path.replace("/api/v1/", MOUNT)): scopes
        for (method, path), scopes in CONTRACT.items()
    }
    documented = {
        (method, path): operation["x-required-scopes"]
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert documented == expected
    assert len(
        {op["operationId"] for ops in schema["paths"].values() for op in ops.values()}
    ) == len(CONTRACT)


def test_our_docs_page_under_its_mount_reads_our_schema(http):
    response = http.get(api("docs/"))

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert f"<title>{TITLE}</title>" in response.text
    assert api("schema/") in response.text


def test_system_checks_are_clean_on_the_site():
    output = manage("check", "--fail-level", "WARNING")

    assert "no issues" in output
