"""Hostile and broken input, from clients and from producers: every client answer is a 4xx
in the contract's envelope, never a 500 or an HTML page; every producer mistake is a clear
error before anything is recorded, and a run that makes one still ends."""

import json

import pytest
from django.test import Client

from executions.models import Event, Execution, Status
from executions.recorder import ExecutionRecorder, UnstorableEvent
from executions.workflows import Workflow, run_execution
from tests.live_server import frames_of
from tests.test_api import assert_error, call, fetch_events

pytestmark = pytest.mark.django_db(transaction=True)

NUL_ID = "exec_\x00abc"


@pytest.fixture
def raw(make_key):
    return make_key()[1]


@pytest.fixture
def client():
    return Client()


# Clients ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/executions/{id}"),
        ("post", "/api/v1/executions/{id}/cancel"),
        ("post", "/api/v1/executions/{id}/stream-token"),
        ("get", "/api/v1/executions/{id}/events"),
    ],
)
@pytest.mark.parametrize("execution_id", [NUL_ID, "exec_" + "x" * 200], ids=["nul", "long"])
def test_an_id_no_execution_can_have_is_a_404(client, raw, method, path, execution_id):
    url = path.format(id=execution_id)
    if url.endswith("/events"):
        response, _ = fetch_events(url, raw)
    else:
        response = call(client, method, url, raw)
    assert_error(response, 404, "resource_not_found")


@pytest.mark.parametrize("value", ["wf\x00demo", "\x00"])
def test_a_nul_in_a_query_value_is_a_validation_error(client, raw, value):
    response = call(client, "get", f"/api/v1/executions?workflow_id={value}", raw)
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("nodes", [-1, 1001, 2**31, 10**30, 2**63])
def test_an_integer_input_out_of_its_range_is_a_validation_error(client, raw, nodes):
    response = call(
        client, "post", "/api/v1/workflows/wf_demo/execute", raw, {"inputs": {"nodes": nodes}}
    )
    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]["inputs"]) == {"nodes"}
    assert not Execution.objects.exists()


def test_a_body_over_the_upload_limit_is_413(client, raw, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"inputs": {"padding": "x" * 2000}})
    response = call(client, "post", "/api/v1/workflows/wf_demo/execute", raw, content=body)
    error = assert_error(response, 413, "validation_error")
    assert error["details"] == {"limit_bytes": 1000}


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"inputs": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
        '{"inputs": {"\\ud800": 1}}',
        '{"inputs": {"nodes": "\\ud83d"}}',
        '{"inputs": {"note": "a\\u0000b"}}',
        '{"inputs": {"nodes": NaN}}',
        '{"inputs": ',
        "\xff\xfe",
    ],
    ids=[
        "deep-array",
        "deep-object",
        "surrogate-key",
        "surrogate-value",
        "nul",
        "nan",
        "truncated",
        "not-utf8",
    ],
)
def test_a_body_the_api_cannot_store_is_a_validation_error(client, raw, content):
    response = call(client, "post", "/api/v1/workflows/wf_demo/execute", raw, content=content)
    error = assert_error(response, 400, "validation_error")
    assert content[:50] not in json.dumps(error)  # never echoed back
    assert not Execution.objects.exists()


def test_two_different_keys_in_one_request_are_a_validation_error(client, make_key):
    _, first = make_key()
    _, second = make_key()
    both = {"X-API-Key": first, "Authorization": f"Bearer {second}"}
    assert_error(call(client, "get", "/api/v1/workflows", **both), 400, "validation_error")
    response, _ = fetch_events(f"/api/v1/executions/{NUL_ID}/events", **both)
    assert_error(response, 400, "validation_error")
    same = {"X-API-Key": first, "Authorization": f"Bearer {first}"}
    assert call(client, "get", "/api/v1/workflows", **same).status_code == 200


# Producers -------------------------------------------------------------------------------


@pytest.fixture
def recorder(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_producer")
    recorder.start()
    return recorder


UNSTORABLE = {
    "nul": {"text": "a\x00b"},
    "nul-key": {"a\x00": 1},
    "surrogate": {"text": "\ud800"},
    "not-json": {"when": object()},
    "nan": {"ratio": float("nan")},
    "non-string-key": {1: "one"},
    "deep": json.loads('{"a": ' * 40 + "1" + "}" * 40),
}


@pytest.mark.parametrize("outputs", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_unstorable_outputs_are_refused_before_anything_is_recorded(recorder, outputs):
    recorder.start_node("n", "transform")
    with pytest.raises(UnstorableEvent, match="cannot be recorded"):
        recorder.complete_node("n", outputs)
    with pytest.raises(UnstorableEvent, match="cannot be recorded"):
        recorder.complete(outputs)
    execution = recorder.execution
    assert (execution.status, execution.last_seq) == (Status.RUNNING, 2)


def test_an_event_over_the_size_limit_is_refused_before_anything_is_recorded(recorder, settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "MAX_EVENT_BYTES": 10_000}
    with pytest.raises(UnstorableEvent, match="MAX_EVENT_BYTES"):
        recorder.complete({"text": "x" * 20_000})
    assert recorder.execution.last_seq == 1
    recorder.complete({"text": "x" * 100})
    assert recorder.execution.status == Status.COMPLETED


@pytest.mark.parametrize("node_id", ["", "a" * 101, "a\x00b", None])
def test_a_node_id_the_log_cannot_hold_is_refused(recorder, node_id):
    with pytest.raises(UnstorableEvent):
        recorder.start_node(node_id, "transform")
    assert recorder.execution.last_seq == 1


def test_an_error_message_is_recorded_whatever_it_holds(recorder):
    recorder.fail(ValueError("bad \x00 row \ud800"))
    execution = recorder.execution
    assert execution.status == Status.FAILED
    assert execution.error == "bad \ufffd row \ufffd"


def test_producer_text_never_breaks_the_framing(recorder):
    recorder.start_node("line\nbreak\r\nid: 99\n\nevent: x", "trans\rform")
    recorder.complete({"text": "data: forged\n\nid: 100\n\n", "sep": "\u2028\u2029"})
    frames = [frame(event) for event in Event.objects.filter(execution_id=recorder.execution_id)]
    for text in frames:
        assert len(frames_of(text)) == 1
        assert text.count(b"\n") == 4  # id, event, data, and the blank line


def frame(event):
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


@pytest.mark.parametrize("outputs", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_a_run_whose_outputs_cannot_be_stored_ends_failed(user, monkeypatch, outputs):
    def workflow_run(recorder, inputs):
        return outputs

    broken = Workflow(id="wf_broken", name="Broken", run=workflow_run)
    monkeypatch.setattr("executions.workflows.get_workflow", lambda workflow_id: broken)
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_broken")
    run_execution(recorder.execution_id)
    execution = recorder.execution
    assert execution.status == Status.FAILED
    assert execution.error.startswith("The workflow's outputs could not be recorded:")
    assert Event.objects.filter(execution=execution).last().type == "execution:failed"


# The database down: the contract's 503, never a 500.


def test_a_database_that_does_not_answer_is_a_503_on_the_rest_api(client, raw, monkeypatch):
    from django.db import OperationalError

    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("executions.views.find_execution", unreachable)
    response = call(client, "get", "/api/v1/executions/exec_x", raw)
    assert_error(response, 503, "service_unavailable")


def test_a_database_that_does_not_answer_is_a_503_on_the_stream(raw, monkeypatch):
    from django.db import OperationalError

    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("executions.stream.open_stream", unreachable)
    response, _ = fetch_events("/api/v1/executions/exec_x/events", raw)
    assert_error(response, 503, "service_unavailable")
