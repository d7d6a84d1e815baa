"""Property-based tests (hypothesis) of every input the API parses: ids, Last-Event-ID,
query parameters, headers, JSON bodies and workflow inputs, with NUL, CR, LF, lone
surrogates, very long values and bytes that are not UTF-8. Every answer is the
contract's JSON envelope with a status below 500."""

import json
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runs import completed_run

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Any text: control characters, NUL, CR and LF, lone surrogates, all of Unicode.
ANY_TEXT = st.text(alphabet=st.characters(codec=None), max_size=300) | st.text(max_size=3000)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=300)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
    max_leaves=30,
)


@pytest.fixture
def api(make_key):
    """A client and a full-access key's headers."""
    return Client(raise_request_exception=False), {"X-API-Key": make_key()[1]}


def assert_contract_answer(response, allowed=(200, 201, 202, 204)):
    """Below 500; an error is the envelope, in JSON (so anything echoed is escaped)."""
    assert response.status_code < 500, response.content[:300]
    if response.status_code in allowed:
        return
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = json.loads(response.content)
    assert set(body) == {"error", "meta"}
    assert body["error"]["code"]
    assert response["X-Request-ID"] == body["meta"]["request_id"]


def close(response):
    if response.streaming:
        response.close()


@EXAMPLES
@given(execution_id=ANY_TEXT)
def test_any_execution_id_in_any_path_is_answered_by_the_contract(api, execution_id):
    client, headers = api
    escaped = quote(execution_id.encode("utf-8", "surrogatepass"), safe="")
    for method, suffix in [("get", ""), ("post", "/cancel"), ("post", "/stream-token")]:
        response = getattr(client, method)(f"/api/v1/executions/{escaped}{suffix}", headers=headers)
        assert_contract_answer(response)
    response = client.get(f"/api/v1/executions/{escaped}/events", headers=headers)
    assert_contract_answer(response)
    close(response)


@EXAMPLES
@given(value=HEADER_TEXT, as_query=st.booleans())
def test_any_last_event_id_is_answered_by_the_contract(api, user, value, as_query):
    client, headers = api
    execution_id = completed_run(user)
    if as_query:
        path = f"/api/v1/executions/{execution_id}/events?last_event_id={quote(value)}"
        response = client.get(path, headers=headers)
    else:
        response = client.get(
            f"/api/v1/executions/{execution_id}/events",
            headers={**headers, "Last-Event-ID": value},
        )
    assert_contract_answer(response)
    close(response)


@EXAMPLES
@given(
    params=st.dictionaries(
        st.sampled_from(["page", "per_page", "status", "workflow_id", "other"]), ANY_TEXT
    )
)
def test_any_query_parameters_are_answered_by_the_contract(api, params):
    client, headers = api
    query = "&".join(
        f"{quote(name)}={quote(value.encode('utf-8', 'surrogatepass'))}"
        for name, value in params.items()
    )
    for path in ("/api/v1/executions", "/api/v1/workflows"):
        assert_contract_answer(client.get(f"{path}?{query}", headers=headers))


@EXAMPLES
@given(key=HEADER_TEXT, authorization=HEADER_TEXT)
def test_any_credential_headers_are_answered_by_the_contract(api, key, authorization):
    client, _ = api
    response = client.get(
        "/api/v1/workflows", headers={"X-API-Key": key, "Authorization": authorization}
    )
    assert_contract_answer(response)


@EXAMPLES
@given(body=JSON_VALUES)
def test_any_json_body_is_answered_by_the_contract(api, body):
    client, headers = api
    content = json.dumps(body)  # lone surrogates are escaped as \\udxxx
    response = client.post(
        "/api/v1/workflows/wf_demo/execute",
        data=content,
        content_type="application/json",
        headers=headers,
    )
    assert_contract_answer(response)


@EXAMPLES
@given(inputs=st.dictionaries(st.sampled_from(["nodes", "delay_ms", "fail_at", "x"]), JSON_VALUES))
def test_any_workflow_inputs_are_answered_by_the_contract(api, inputs):
    client, headers = api
    # The task is queued in the database; no worker runs it here.
    response = client.post(
        "/api/v1/workflows/wf_demo/execute",
        data=json.dumps({"inputs": inputs}),
        content_type="application/json",
        headers=headers,
    )
    assert_contract_answer(response)


@EXAMPLES
@given(body=st.binary(max_size=2000))
def test_any_bytes_as_a_body_are_answered_by_the_contract(api, body):
    client, headers = api
    response = client.post(
        "/api/v1/workflows/wf_demo/execute",
        data=body,
        content_type="application/json",
        headers=headers,
    )
    assert_contract_answer(response)
