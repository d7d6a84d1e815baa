"""The REST API around the stream: workflows, execute, list/get/cancel executions, and the
contract's envelopes, scopes, isolation and error handling on every endpoint."""

import json
import re
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.serializers import ModelSerializer

from executions import views
from executions import workflows as registry_module
from executions.models import Event, Execution, NodeRun, Status
from executions.recorder import ExecutionFinished, ExecutionRecorder
from executions.workflows import Input, Workflow, run_execution
from tests.contract import EXECUTION_FIELDS, NODE_FIELDS, PAGINATION_FIELDS, WORKFLOW_FIELDS

pytestmark = pytest.mark.django_db

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
EXECUTION_ID = re.compile(r"^exec_[A-Za-z0-9_-]{16,}$")
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
DEMO_DEFAULTS = {"nodes": 3, "delay_ms": 500}
MISSING_ID = "exec_doesNotExist0000000000"

# Every endpoint and the scopes it requires; "{id}" is an execution the key can see.
ENDPOINTS = [
    ("get", "/api/v1/workflows", ["workflows:read"]),
    ("get", "/api/v1/workflows/wf_demo", ["workflows:read"]),
    ("post", "/api/v1/workflows/wf_demo/execute", ["workflows:read", "workflows:execute"]),
    ("get", "/api/v1/executions", ["executions:read"]),
    ("get", "/api/v1/executions/{id}", ["executions:read"]),
    ("post", "/api/v1/executions/{id}/cancel", ["executions:read", "executions:cancel"]),
]
EVENTS = "/api/v1/executions/{id}/events"
ENDPOINT_IDS = [f"{method} {path}" for method, path, _ in ENDPOINTS]


# Helpers ---------------------------------------------------------------------------------


def call(client, method, path, raw=None, body=None, content=None, **headers):
    """Send ``method`` to ``path`` with the key ``raw``; ``body`` is sent as JSON."""
    if raw is not None:
        headers.setdefault("X-API-Key", raw)
    if method == "get":
        return client.get(path, headers=headers)
    if content is None:
        content = json.dumps({} if body is None else body)
    return getattr(client, method)(
        path, data=content, content_type="application/json", headers=headers
    )


def fetch_events(path, raw=None, **headers):
    """GET the (async) events endpoint; return ``(response, body bytes)``."""
    if raw is not None:
        headers.setdefault("X-API-Key", raw)

    async def fetch():
        response = await AsyncClient().get(path, headers=headers)
        if response.streaming:
            return response, b"".join([chunk async for chunk in response.streaming_content])
        return response, response.content

    return async_to_sync(fetch)()


def assert_meta(body, response):
    assert set(body["meta"]) == {"request_id", "timestamp"}
    uuid.UUID(body["meta"]["request_id"])
    assert TIMESTAMP.match(body["meta"]["timestamp"])
    assert response["X-Request-ID"] == body["meta"]["request_id"]


def assert_success(response, status=200):
    """Assert ``response`` is the contract's success envelope; return ``data``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) <= {"data", "meta", "pagination"}
    assert_meta(body, response)
    return body["data"]


def assert_page(response):
    """Assert a paginated success envelope; return ``(data, pagination)``."""
    data = assert_success(response)
    pagination = response.json()["pagination"]
    assert set(pagination) == PAGINATION_FIELDS
    assert pagination["has_more"] == pagination["has_next"]
    return data, pagination


def assert_error(response, status, code):
    """Assert ``response`` is the contract's error envelope; return its ``error``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "meta"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert set(body["error"]) <= {"code", "message", "details"}
    assert_meta(body, response)
    return body["error"]


def assert_api_headers(response):
    uuid.UUID(response["X-Request-ID"])
    for name in RATE_LIMIT_HEADERS:
        assert response[name].isdigit(), name


def without_id(error, resource_id):
    """Return ``error`` as JSON text with ``resource_id`` blanked out, for comparison."""
    return json.dumps(error, sort_keys=True).replace(resource_id, "<id>")


def new_execution(owner, mode="live", workflow_id="wf_demo", inputs=None):
    return ExecutionRecorder.create(
        owner=owner, workflow_id=workflow_id, inputs=inputs or DEMO_DEFAULTS, mode=mode
    )


def finished_execution(owner, mode="live", nodes=("node_1",)):
    """Record a completed run with one completed node run per ``nodes``; return its recorder."""
    recorder = new_execution(owner, mode)
    recorder.start()
    for node_id in nodes:
        with recorder.node(node_id, "http") as node:
            node.outputs = {"node": node_id}
    recorder.complete({"nodes_run": len(nodes)})
    return recorder


def bulk_executions(owner, count, nodes_each=2):
    """Insert ``count`` finished executions with node runs, without recording events."""
    now = timezone.now()
    executions = Execution.objects.bulk_create(
        Execution(
            owner=owner,
            workflow_id="wf_demo",
            status=Status.COMPLETED,
            started_at=now,
            completed_at=now,
            outputs={},
        )
        for _ in range(count)
    )
    NodeRun.objects.bulk_create(
        NodeRun(
            execution=execution,
            node_id=f"node_{number}",
            node_type="http",
            status=Status.COMPLETED,
            started_at=now,
            completed_at=now,
            duration_ms=0,
        )
        for execution in executions
        for number in range(nodes_each)
    )
    return executions


def events_of(execution_id):
    return list(Event.objects.filter(execution_id=execution_id).values_list("type", flat=True))


def queued_runs(execution_id):
    DBTaskResult = apps.get_model("django_tasks_database", "DBTaskResult")
    return DBTaskResult.objects.filter(
        task_path="executions.tasks.run_execution_task",
        args_kwargs__args=[execution_id],
    )


@pytest.fixture
def raw(make_key):
    """A full-access live key of ``user``."""
    return make_key()[1]


@pytest.fixture
def extra_workflow(monkeypatch):
    """Register ``wf_required`` (one required input) for the length of a test."""
    registry_module.registry()

    def run(recorder, inputs):
        return {"echo": inputs["name"]}

    workflow = Workflow(
        id="wf_required",
        name="Needs a name",
        run=run,
        inputs={"name": Input("string", label="Name", required=True)},
    )
    monkeypatch.setitem(registry_module._registry, workflow.id, workflow)
    return workflow


# Workflows -------------------------------------------------------------------------------


def test_workflow_list_is_a_paginated_envelope_of_every_workflow(client, raw, extra_workflow):
    data, pagination = assert_page(call(client, "get", "/api/v1/workflows", raw))

    assert [workflow["id"] for workflow in data] == ["wf_demo", "wf_required"]
    assert pagination == {
        "page": 1,
        "per_page": 20,
        "total_count": 2,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
        "has_more": False,
    }


def test_workflow_list_pages_through_the_workflows(client, raw, extra_workflow):
    first, first_page = assert_page(call(client, "get", "/api/v1/workflows?per_page=1", raw))
    second, second_page = assert_page(
        call(client, "get", "/api/v1/workflows?per_page=1&page=2", raw)
    )

    assert [w["id"] for w in first + second] == ["wf_demo", "wf_required"]
    assert first_page["has_next"] and not first_page["has_prev"]
    assert second_page["has_prev"] and not second_page["has_next"]
    assert first_page["total_pages"] == second_page["total_pages"] == 2


def test_workflow_detail_describes_each_input(client, raw):
    data = assert_success(call(client, "get", "/api/v1/workflows/wf_demo", raw))

    assert set(data) == WORKFLOW_FIELDS
    assert data["id"] == "wf_demo"
    assert data["version"] == 1
    assert data["created_at"] == "2026-11-01T00:00:00.000Z"
    assert data["updated_at"] == "2026-11-24T00:00:00.000Z"
    assert set(data["inputs"]) == {"nodes", "delay_ms", "fail_at"}
    for spec in data["inputs"].values():
        assert {"type", "label", "required", "description"} <= set(spec)
        assert spec["type"] == "integer"
        assert spec["required"] is False
        assert isinstance(spec["label"], str)
        assert spec["label"]
    assert data["inputs"]["nodes"]["default"] == 3


def test_unknown_workflow_is_not_found(client, raw):
    error = assert_error(
        call(client, "get", "/api/v1/workflows/wf_nope", raw), 404, "resource_not_found"
    )
    assert error["details"] == {"resource": "workflow", "id": "wf_nope"}

    error = assert_error(
        call(client, "post", "/api/v1/workflows/wf_nope/execute", raw), 404, "resource_not_found"
    )
    assert error["details"] == {"resource": "workflow", "id": "wf_nope"}


# Execute ---------------------------------------------------------------------------------


def test_execute_answers_202_with_a_pending_execution_and_defaults_applied(client, raw, user):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, body={"inputs": {"nodes": 2}}
    )

    data = assert_success(response, 202)
    assert set(data) == {"execution_id", "workflow_id", "status", "inputs"}
    assert EXECUTION_ID.match(data["execution_id"])
    assert data["workflow_id"] == "wf_demo"
    assert data["status"] == "pending"
    assert data["inputs"] == {"nodes": 2, "delay_ms": 500}
    execution = Execution.objects.get(pk=data["execution_id"])
    assert (execution.owner, execution.mode, execution.status) == (user, "live", "pending")
    assert execution.inputs == data["inputs"]
    assert queued_runs(execution.pk).count() == 1


def test_execute_without_inputs_uses_every_default(client, raw):
    for body in ({}, {"inputs": {}}):
        data = assert_success(
            call(client, "post", "/api/v1/workflows/wf_demo/execute", raw, body=body), 202
        )
        assert data["inputs"] == DEMO_DEFAULTS


def test_running_the_queued_execution_completes_it(client, raw):
    response = call(
        client,
        "post",
        "/api/v1/workflows/wf_demo/execute",
        raw,
        body={"inputs": {"nodes": 2, "delay_ms": 0}},
    )
    execution_id = assert_success(response, 202)["execution_id"]

    run_execution(execution_id)

    data = assert_success(call(client, "get", f"/api/v1/executions/{execution_id}", raw))
    assert data["status"] == "completed"
    assert data["outputs"]["nodes_run"] == 2
    assert [node["node_id"] for node in data["nodes"]] == ["node_1", "node_2"]
    assert events_of(execution_id)[0] == "execution:started"
    assert events_of(execution_id)[-1] == "execution:completed"


@pytest.mark.django_db(transaction=True)
def test_the_database_worker_runs_a_queued_execution(client, raw):
    response = call(
        client,
        "post",
        "/api/v1/workflows/wf_demo/execute",
        raw,
        body={"inputs": {"nodes": 1, "delay_ms": 0}},
    )
    execution_id = assert_success(response, 202)["execution_id"]

    call_command(
        "db_worker", "--max-tasks", "1", "--no-startup-delay", "--no-reload", "--interval", "0.01"
    )

    assert Execution.objects.get(pk=execution_id).status == "completed"
    assert queued_runs(execution_id).get().status == "SUCCESSFUL"


def test_execute_answers_503_and_fails_the_execution_when_the_queue_is_down(
    client, raw, monkeypatch
):
    class DownQueue:
        def enqueue(self, *args, **kwargs):
            raise ConnectionError("queue down")

    monkeypatch.setattr(views, "run_execution_task", DownQueue())

    response = call(client, "post", "/api/v1/workflows/wf_demo/execute", raw)

    assert_error(response, 503, "service_unavailable")
    execution = Execution.objects.get()
    assert execution.status == "failed"
    assert events_of(execution.pk) == ["execution:failed"]


@pytest.mark.parametrize(
    ("inputs", "details"),
    [
        ({"nodes": "3"}, {"nodes": "Expected integer."}),
        ({"nodes": True}, {"nodes": "Expected integer."}),
        ({"nodes": 1.5}, {"nodes": "Expected integer."}),
        ({"colour": "red"}, {"colour": "Unknown input."}),
        (
            {"nodes": "3", "delay_ms": [], "colour": 1},
            {
                "nodes": "Expected integer.",
                "delay_ms": "Expected integer.",
                "colour": "Unknown input.",
            },
        ),
    ],
    ids=["string-for-integer", "bool-for-integer", "float-for-integer", "unknown", "several"],
)
def test_execute_rejects_bad_inputs_naming_each_bad_field(client, raw, inputs, details):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, body={"inputs": inputs}
    )

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"inputs": details}
    assert not Execution.objects.exists()


def test_execute_rejects_a_missing_required_input(client, raw, extra_workflow):
    response = call(client, "post", "/api/v1/workflows/wf_required/execute", raw)

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"inputs": {"name": "This input is required."}}


@pytest.mark.parametrize(
    "body", [[1, 2], "inputs", 3, None], ids=["list", "string", "number", "null"]
)
def test_execute_rejects_a_body_that_is_not_an_object(client, raw, body):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, content=json.dumps(body)
    )

    error = assert_error(response, 400, "validation_error")
    assert "body" in error["details"]
    assert not Execution.objects.exists()


@pytest.mark.parametrize("inputs", [[1], "nodes=3", 7], ids=["list", "string", "number"])
def test_execute_rejects_inputs_that_are_not_an_object(client, raw, inputs):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, body={"inputs": inputs}
    )

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"inputs": "Not an object."}
    assert not Execution.objects.exists()


@pytest.mark.parametrize("inputs", [[], "", 0, False], ids=["list", "string", "zero", "false"])
def test_execute_rejects_falsy_inputs_that_are_not_an_object(client, raw, inputs):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, body={"inputs": inputs}
    )

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"inputs": "Not an object."}


def test_execute_rejects_a_body_that_is_not_json(client, raw):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, content='{"inputs": {"nodes": 1'
    )

    error = assert_error(response, 400, "validation_error")
    assert "body" in error.get("details", {})
    assert not Execution.objects.exists()


# Listing executions ----------------------------------------------------------------------


def test_execution_list_is_newest_first_and_holds_only_the_keys_executions(
    client, raw, user, other_user
):
    older = new_execution(user).execution_id
    newer = new_execution(user).execution_id
    new_execution(other_user)
    new_execution(user, mode="test")
    Execution.objects.filter(pk=older).update(created_at=timezone.now() - timedelta(minutes=1))

    data, pagination = assert_page(call(client, "get", "/api/v1/executions", raw))

    assert [execution["id"] for execution in data] == [newer, older]
    assert pagination["total_count"] == 2
    assert set(data[0]) == EXECUTION_FIELDS


def test_execution_list_filters_by_workflow_and_status(client, raw, user):
    done = finished_execution(user).execution_id
    pending = new_execution(user).execution_id
    other_workflow = new_execution(user, workflow_id="wf_other").execution_id

    def ids(query):
        data, _ = assert_page(call(client, "get", f"/api/v1/executions?{query}", raw))
        return {execution["id"] for execution in data}

    assert ids("workflow_id=wf_demo") == {done, pending}
    assert ids("workflow_id=wf_other") == {other_workflow}
    assert ids("status=completed") == {done}
    assert ids("status=pending") == {pending, other_workflow}
    assert ids("status=pending&workflow_id=wf_demo") == {pending}
    assert ids("status=cancelled") == set()


def test_execution_list_rejects_an_unknown_status(client, raw):
    response = call(client, "get", "/api/v1/executions?status=done", raw)

    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]) == {"status"}
    for status in Status.values:
        assert status in error["details"]["status"]


def test_execution_list_caps_per_page_at_100(client, raw, user):
    bulk_executions(user, 101, nodes_each=0)

    data, pagination = assert_page(call(client, "get", "/api/v1/executions?per_page=500", raw))

    assert len(data) == 100
    assert pagination["per_page"] == 100
    assert pagination["total_count"] == 101
    assert pagination["total_pages"] == 2
    assert pagination["has_next"] is True


def test_execution_list_pagination_fields(client, raw, user):
    bulk_executions(user, 5, nodes_each=0)

    _, first = assert_page(call(client, "get", "/api/v1/executions?per_page=2", raw))
    middle_data, middle = assert_page(
        call(client, "get", "/api/v1/executions?per_page=2&page=2", raw)
    )
    last_data, last = assert_page(call(client, "get", "/api/v1/executions?per_page=2&page=3", raw))
    beyond_data, beyond = assert_page(
        call(client, "get", "/api/v1/executions?per_page=2&page=4", raw)
    )

    assert (first["has_prev"], first["has_next"]) == (False, True)
    assert (middle["has_prev"], middle["has_next"], len(middle_data)) == (True, True, 2)
    assert (last["has_prev"], last["has_next"], len(last_data)) == (True, False, 1)
    assert (beyond_data, beyond["has_next"], beyond["total_pages"]) == ([], False, 3)


@pytest.mark.parametrize("name", ["page", "per_page"])
@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "2x"])
def test_execution_list_rejects_a_page_parameter_that_is_not_a_positive_integer(
    client, raw, name, value
):
    response = call(client, "get", f"/api/v1/executions?{name}={value}", raw)

    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]) == {name}


@pytest.mark.parametrize("name", ["page", "per_page"])
def test_workflow_list_rejects_a_page_parameter_that_is_not_a_positive_integer(client, raw, name):
    response = call(client, "get", f"/api/v1/workflows?{name}=0", raw)

    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]) == {name}


@pytest.mark.parametrize("name", ["page", "per_page"])
def test_execution_list_rejects_a_non_ascii_digit_page_parameter(client, raw, name):
    response = call(client, "get", f"/api/v1/executions?{name}=\u00b2", raw)

    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]) == {name}


def test_execution_list_answers_a_huge_page_number_without_crashing(client, raw):
    response = call(client, "get", f"/api/v1/executions?page={10**20}", raw)

    assert response.status_code in {200, 400}
    assert response["Content-Type"] == "application/json"


def test_execution_list_breaks_created_at_ties_by_id_so_pages_are_stable(client, raw, user):
    executions = bulk_executions(user, 7, nodes_each=0)
    same_time = timezone.now()
    Execution.objects.update(created_at=same_time)

    seen = []
    for page in range(1, 5):
        data, _ = assert_page(
            call(client, "get", f"/api/v1/executions?per_page=2&page={page}", raw)
        )
        seen.extend(execution["id"] for execution in data)
    again, _ = assert_page(call(client, "get", "/api/v1/executions?per_page=100", raw))

    expected = sorted((execution.pk for execution in executions), reverse=True)
    assert seen == expected
    assert [execution["id"] for execution in again] == expected


def test_execution_list_queries_do_not_grow_with_the_page_size(
    client, raw, user, django_assert_max_num_queries
):
    bulk_executions(user, 5)
    call(client, "get", "/api/v1/executions", raw)  # let the key's last-use write happen now

    with CaptureQueriesContext(connection) as few:
        data, _ = assert_page(call(client, "get", "/api/v1/executions?per_page=100", raw))
    assert len(data) == 5

    bulk_executions(user, 45)
    with django_assert_max_num_queries(len(few)):
        data, _ = assert_page(call(client, "get", "/api/v1/executions?per_page=100", raw))
    assert len(data) == 50
    assert all(len(execution["nodes"]) == 2 for execution in data)


# One execution ---------------------------------------------------------------------------


def test_execution_detail_has_node_runs_with_millisecond_utc_times(client, raw, user):
    recorder = finished_execution(user, nodes=("node_1", "node_2"))
    execution = recorder.execution

    data = assert_success(call(client, "get", f"/api/v1/executions/{execution.pk}", raw))

    assert set(data) == EXECUTION_FIELDS
    assert data["id"] == execution.pk
    assert data["workflow_id"] == "wf_demo"
    assert data["status"] == "completed"
    assert data["inputs"] == DEMO_DEFAULTS
    assert data["outputs"] == {"nodes_run": 2}
    assert data["error"] is None
    for field in ("started_at", "completed_at", "created_at"):
        assert TIMESTAMP.match(data[field]), field
    assert data["duration_ms"] == execution.duration_ms
    assert isinstance(data["duration_ms"], int)
    assert data["duration_ms"] >= 0
    assert [node["node_id"] for node in data["nodes"]] == ["node_1", "node_2"]
    for node in data["nodes"]:
        assert set(node) == NODE_FIELDS
        assert node["node_type"] == "http"
        assert node["status"] == "completed"
        assert node["outputs"] == {"node": node["node_id"]}
        assert node["error"] is None
        assert TIMESTAMP.match(node["started_at"])
        assert TIMESTAMP.match(node["completed_at"])
        assert isinstance(node["duration_ms"], int)
        assert node["duration_ms"] >= 0


def test_executions_are_represented_with_fields_built_once_per_serializer_class(
    client, raw, user, monkeypatch
):
    finished = finished_execution(user, nodes=("node_1", "node_2")).execution_id
    pending = new_execution(user).execution_id
    call(client, "get", f"/api/v1/executions/{finished}", raw)  # builds them if not yet
    built = []
    get_fields = ModelSerializer.get_fields
    monkeypatch.setattr(
        ModelSerializer, "get_fields", lambda self: built.append(self) or get_fields(self)
    )

    detail = assert_success(call(client, "get", f"/api/v1/executions/{pending}", raw))
    listed, _ = assert_page(call(client, "get", "/api/v1/executions", raw))

    assert built == []
    assert detail["id"] == pending
    assert detail["nodes"] == []
    assert [(e["id"], len(e["nodes"])) for e in listed] == [(pending, 0), (finished, 2)]


def test_pending_execution_detail_has_nulls_for_what_has_not_happened(client, raw, user):
    execution_id = new_execution(user).execution_id

    data = assert_success(call(client, "get", f"/api/v1/executions/{execution_id}", raw))

    assert data["status"] == "pending"
    assert TIMESTAMP.match(data["created_at"])
    for field in ("outputs", "error", "started_at", "completed_at", "duration_ms"):
        assert data[field] is None, field
    assert data["nodes"] == []


def test_failed_execution_detail_has_the_error_message_and_the_failed_node(client, raw, user):
    recorder = new_execution(user)
    recorder.start()
    with pytest.raises(RuntimeError), recorder.node("node_1", "http"):
        raise RuntimeError("upstream said no")
    recorder.fail("upstream said no", node_id="node_1")

    data = assert_success(call(client, "get", f"/api/v1/executions/{recorder.execution_id}", raw))

    assert (data["status"], data["error"]) == ("failed", "upstream said no")
    [node] = data["nodes"]
    assert (node["status"], node["error"], node["outputs"]) == ("failed", "upstream said no", None)
    assert TIMESTAMP.match(node["completed_at"])


# Cancel ----------------------------------------------------------------------------------


def test_cancelling_a_pending_execution_stops_it_before_it_runs(client, raw, user):
    execution_id = new_execution(user).execution_id

    response = call(client, "post", f"/api/v1/executions/{execution_id}/cancel", raw)

    data = assert_success(response)
    assert set(data) == EXECUTION_FIELDS
    assert data["status"] == "cancelled"
    assert TIMESTAMP.match(data["completed_at"])
    assert events_of(execution_id) == ["execution:cancelled"]

    run_execution(execution_id)

    assert events_of(execution_id) == ["execution:cancelled"]
    assert Execution.objects.get(pk=execution_id).status == "cancelled"


def test_cancelling_a_running_execution_stops_it_at_the_next_node_boundary(client, raw, user):
    recorder = new_execution(user)
    recorder.start()
    recorder.start_node("node_1", "http")

    data = assert_success(
        call(client, "post", f"/api/v1/executions/{recorder.execution_id}/cancel", raw)
    )

    assert data["status"] == "cancelled"
    recorded = events_of(recorder.execution_id)
    assert recorded == ["execution:started", "node:started", "execution:cancelled"]
    event = Event.objects.get(execution_id=recorder.execution_id, type="execution:cancelled")
    payload = json.loads(event.data)
    assert payload["status"] == "cancelled"
    assert TIMESTAMP.match(payload["cancelled_at"])
    with pytest.raises(ExecutionFinished):
        recorder.complete_node("node_1", {"late": True})
    with pytest.raises(ExecutionFinished):
        recorder.start_node("node_2", "http")
    with pytest.raises(ExecutionFinished):
        recorder.complete({"late": True})
    run_execution(recorder.execution_id)
    assert events_of(recorder.execution_id) == recorded
    assert Execution.objects.get(pk=recorder.execution_id).status == "cancelled"


def test_cancelling_a_running_execution_leaves_no_node_running(client, raw, user):
    recorder = new_execution(user)
    recorder.start()
    recorder.start_node("node_1", "http")

    data = assert_success(
        call(client, "post", f"/api/v1/executions/{recorder.execution_id}/cancel", raw)
    )

    [node] = data["nodes"]
    assert node["status"] == "cancelled"
    assert TIMESTAMP.match(node["completed_at"])
    assert isinstance(node["duration_ms"], int)


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
def test_cancelling_a_finished_execution_is_a_validation_error(client, raw, user, outcome):
    recorder = new_execution(user)
    if outcome == "completed":
        recorder.start()
        recorder.complete({})
    elif outcome == "failed":
        recorder.fail("broken")
    else:
        recorder.cancel()
    before = events_of(recorder.execution_id)

    response = call(client, "post", f"/api/v1/executions/{recorder.execution_id}/cancel", raw)

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"status": outcome}
    assert events_of(recorder.execution_id) == before


# Scopes ----------------------------------------------------------------------------------


SCOPE_CASES = [
    pytest.param(method, path, required, missing, id=f"{method} {path} -{','.join(missing)}")
    for method, path, required in ENDPOINTS
    for missing in [*([scope] for scope in required), *([required] if len(required) > 1 else [])]
]


@pytest.mark.parametrize(("method", "path", "required", "missing"), SCOPE_CASES)
def test_endpoint_requires_every_scope_it_names(
    client, make_key, user, method, path, required, missing
):
    from apikeys.scopes import all_scopes

    scopes = [scope for scope in all_scopes() if scope not in missing]
    raw = make_key(scopes=scopes)[1]
    execution_id = new_execution(user).execution_id

    response = call(client, method, path.format(id=execution_id), raw)

    error = assert_error(response, 403, "insufficient_scope")
    assert error["details"] == {
        "required_scopes": required,
        "missing_scopes": missing,
        "your_scopes": scopes,
    }
    assert_api_headers(response)
    assert Execution.objects.get(pk=execution_id).status == "pending"
    assert Execution.objects.count() == 1


@pytest.mark.parametrize(("method", "path", "required"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_endpoint_answers_a_key_holding_exactly_its_scopes(
    client, make_key, user, method, path, required
):
    raw = make_key(scopes=required)[1]
    execution_id = new_execution(user).execution_id

    response = call(client, method, path.format(id=execution_id), raw)

    assert response.status_code in {200, 202}, response.content


@pytest.mark.parametrize(("method", "path", "required"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_endpoint_needs_a_key(client, method, path, required):
    response = call(client, method, path.format(id=MISSING_ID))

    assert_error(response, 401, "invalid_api_key")
    uuid.UUID(response["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
def test_events_endpoint_requires_executions_read(make_key, user):
    from apikeys.scopes import all_scopes

    scopes = [scope for scope in all_scopes() if scope != "executions:read"]
    raw = make_key(scopes=scopes)[1]
    execution_id = finished_execution(user).execution_id

    response, _ = fetch_events(EVENTS.format(id=execution_id), raw)

    error = assert_error(response, 403, "insufficient_scope")
    assert error["details"] == {
        "required_scopes": ["executions:read"],
        "missing_scopes": ["executions:read"],
        "your_scopes": scopes,
    }


# Owner and mode isolation ----------------------------------------------------------------

HIDDEN = ["other owner", "other mode"]


def hidden_execution(case, user, other_user):
    if case == "other owner":
        return new_execution(other_user).execution_id
    return new_execution(user, mode="test").execution_id


@pytest.mark.parametrize("case", HIDDEN)
@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/v1/executions/{id}"), ("post", "/api/v1/executions/{id}/cancel")],
    ids=["get", "cancel"],
)
def test_an_execution_the_key_may_not_see_is_indistinguishable_from_a_missing_one(
    client, raw, user, other_user, case, method, path
):
    hidden = hidden_execution(case, user, other_user)

    response = call(client, method, path.format(id=hidden), raw)
    missing = call(client, method, path.format(id=MISSING_ID), raw)

    error = assert_error(response, 404, "resource_not_found")
    assert error["details"] == {"resource": "execution", "id": hidden}
    assert without_id(error, hidden) == without_id(
        assert_error(missing, 404, "resource_not_found"), MISSING_ID
    )
    assert Execution.objects.get(pk=hidden).status == "pending"
    assert events_of(hidden) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", HIDDEN)
def test_events_of_an_execution_the_key_may_not_see_are_not_found(raw, user, other_user, case):
    hidden = hidden_execution(case, user, other_user)

    response, _ = fetch_events(EVENTS.format(id=hidden), raw)
    missing, _ = fetch_events(EVENTS.format(id=MISSING_ID), raw)

    error = assert_error(response, 404, "resource_not_found")
    assert error["details"] == {"resource": "execution", "id": hidden}
    assert without_id(error, hidden) == without_id(
        assert_error(missing, 404, "resource_not_found"), MISSING_ID
    )


def test_a_test_key_creates_test_executions_that_a_live_key_cannot_see(client, make_key, user):
    live = make_key(mode="live")[1]
    test = make_key(mode="test")[1]
    response = call(client, "post", "/api/v1/workflows/wf_demo/execute", test)
    execution_id = assert_success(response, 202)["execution_id"]

    assert Execution.objects.get(pk=execution_id).mode == "test"
    test_list, _ = assert_page(call(client, "get", "/api/v1/executions", test))
    assert [execution["id"] for execution in test_list] == [execution_id]
    live_list, pagination = assert_page(call(client, "get", "/api/v1/executions", live))
    assert (live_list, pagination["total_count"]) == ([], 0)
    assert_error(
        call(client, "get", f"/api/v1/executions/{execution_id}", live), 404, "resource_not_found"
    )
    assert_success(call(client, "get", f"/api/v1/executions/{execution_id}", test))


def test_a_live_key_creates_live_executions_that_a_test_key_cannot_see(client, make_key):
    live = make_key(mode="live")[1]
    test = make_key(mode="test")[1]
    execution_id = assert_success(
        call(client, "post", "/api/v1/workflows/wf_demo/execute", live), 202
    )["execution_id"]

    assert Execution.objects.get(pk=execution_id).mode == "live"
    assert_error(
        call(client, "get", f"/api/v1/executions/{execution_id}", test), 404, "resource_not_found"
    )
    assert_error(
        call(client, "post", f"/api/v1/executions/{execution_id}/cancel", test),
        404,
        "resource_not_found",
    )


# Headers, unknown paths, methods and crashes ---------------------------------------------


@pytest.mark.parametrize(("method", "path", "required"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_answer_carries_the_request_id_and_rate_limit_headers(
    client, raw, user, method, path, required
):
    execution_id = new_execution(user).execution_id

    response = call(client, method, path.format(id=execution_id), raw)

    assert response.status_code in {200, 202}
    assert_api_headers(response)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", "/api/v1/workflows?per_page=0", None, 400),
        ("get", "/api/v1/workflows/wf_nope", None, 404),
        ("post", "/api/v1/workflows/wf_demo/execute", {"inputs": {"colour": 1}}, 400),
        ("get", "/api/v1/executions?status=done", None, 400),
        ("get", f"/api/v1/executions/{MISSING_ID}", None, 404),
        ("post", f"/api/v1/executions/{MISSING_ID}/cancel", None, 404),
    ],
)
def test_every_error_answer_carries_the_request_id_and_rate_limit_headers(
    client, raw, method, path, body, status
):
    response = call(client, method, path, raw, body=body)

    assert response.status_code == status
    assert_api_headers(response)


@pytest.mark.django_db(transaction=True)
def test_the_events_endpoint_carries_the_request_id_and_rate_limit_headers(raw, user):
    execution_id = finished_execution(user).execution_id

    response, body = fetch_events(EVENTS.format(id=execution_id), raw)
    missing, _ = fetch_events(EVENTS.format(id=MISSING_ID), raw)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert body.startswith(b"retry: ")
    assert b"event: execution:completed" in body
    assert_api_headers(response)
    assert_error(missing, 404, "resource_not_found")
    assert_api_headers(missing)


def test_a_well_formed_incoming_request_id_is_kept(client, raw):
    response = call(client, "get", "/api/v1/workflows", raw, **{"X-Request-ID": "trace-12345678"})

    assert response["X-Request-ID"] == "trace-12345678"
    assert response.json()["meta"]["request_id"] == "trace-12345678"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nope", "/api/v1/", "/api/v1/workflows/wf_demo/", "/api/v1/executions/x/y/z"],
)
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
def test_an_unknown_path_under_the_api_is_a_json_404(client, raw, settings, path, debug):
    settings.DEBUG = debug

    for response in (call(client, "get", path, raw), call(client, "post", path)):
        error = assert_error(response, 404, "resource_not_found")
        assert error["details"] == {"resource": "endpoint", "id": path}
        uuid.UUID(response["X-Request-ID"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("delete", "/api/v1/workflows"),
        ("post", "/api/v1/workflows/wf_demo"),
        ("get", "/api/v1/workflows/wf_demo/execute"),
        ("put", "/api/v1/executions"),
        ("patch", "/api/v1/executions/{id}"),
        ("get", "/api/v1/executions/{id}/cancel"),
    ],
)
def test_a_method_the_endpoint_does_not_allow_is_a_json_error(client, raw, user, method, path):
    execution_id = new_execution(user).execution_id

    response = call(client, method, path.format(id=execution_id), raw)

    assert_error(response, 405, "method_not_allowed")
    assert method.upper() not in response["Allow"]
    assert_api_headers(response)
    assert Execution.objects.get(pk=execution_id).status == "pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["post", "delete"])
def test_a_method_other_than_get_on_the_events_endpoint_is_a_json_error(raw, user, method):
    execution_id = finished_execution(user).execution_id

    async def send():
        return await getattr(AsyncClient(), method)(
            EVENTS.format(id=execution_id), headers={"X-API-Key": raw}
        )

    response = async_to_sync(send)()

    assert response.status_code == 405
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
@pytest.mark.parametrize(
    ("target", "method", "path"),
    [
        ("ExecutionSerializer", "get", "/api/v1/executions/{id}"),
        ("ExecutionSerializer", "get", "/api/v1/executions"),
        ("registry", "get", "/api/v1/workflows"),
        ("create_execution", "post", "/api/v1/workflows/wf_demo/execute"),
    ],
)
def test_an_unexpected_exception_in_a_view_is_a_500_without_a_traceback(
    client, raw, user, settings, monkeypatch, caplog, debug, target, method, path
):
    settings.DEBUG = debug
    execution_id = new_execution(user).execution_id
    secret = "secret-detail-of-the-crash"

    def crash(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(views, target, crash)

    response = call(client, method, path.format(id=execution_id), raw)

    error = assert_error(response, 500, "internal_error")
    assert "details" not in error
    text = response.content.decode()
    assert secret not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert_api_headers(response)
    assert secret in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
def test_an_unexpected_exception_in_the_events_view_is_a_500_without_a_traceback(
    raw, user, settings, monkeypatch, debug
):
    from executions import stream

    settings.DEBUG = debug
    execution_id = finished_execution(user).execution_id
    secret = "secret-detail-of-the-crash"

    def crash(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(stream, "last_event_id", crash)

    response, body = fetch_events(EVENTS.format(id=execution_id), raw)

    error = assert_error(response, 500, "internal_error")
    assert "details" not in error
    assert secret.encode() not in body
    assert b"Traceback" not in body
