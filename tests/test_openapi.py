"""The OpenAPI document of the API and its Swagger UI page, as integrators read them."""

import json
import re
import runpy
from pathlib import Path

import httpx
import pytest
import yaml
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client
from drf_spectacular.validation import validate_schema

import flowmaestro
from tests.contract import (
    CONTRACT,
    EXECUTION_FIELDS,
    NODE_FIELDS,
    PAGINATION_FIELDS,
    WORKFLOW_FIELDS,
)

SCHEMA = "/api/v1/schema/"
DOCS = "/api/v1/docs/"
ERROR_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}

# The contract's endpoint table: (method, path) -> required scopes.
EVENTS_PATH = "/api/v1/executions/{execution_id}/events"
# The contract's event table: event -> payload fields beyond type and execution_id.
EVENT_FIELDS = {
    "connected": ["status"],
    "execution:started": ["workflow_id", "started_at"],
    "execution:progress": ["progress", "current_node", "completed_nodes", "total_nodes"],
    "node:started": ["node_id", "node_type", "started_at"],
    "node:completed": ["node_id", "node_type", "outputs", "duration_ms", "completed_at"],
    "node:failed": ["node_id", "node_type", "error", "duration_ms", "failed_at"],
    "execution:completed": ["status", "outputs", "duration_ms", "completed_at"],
    "execution:failed": ["status", "error", "node_id", "completed_at"],
    "execution:cancelled": ["status", "cancelled_at"],
}
OPERATIONS = pytest.mark.parametrize(
    ("method", "path"), list(CONTRACT), ids=[f"{m} {p}" for m, p in CONTRACT]
)


@pytest.fixture(scope="module")
def schema():
    """The schema as the API serves it, decoded from JSON."""
    response = Client().get(SCHEMA, {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def resolve(schema, node):
    """Follow a ``$ref`` within the document."""
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def operation(schema, method, path):
    return schema["paths"][path][method]


# The schema ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_schema_is_served_without_a_key_as_yaml_and_json(client):
    as_yaml = client.get(SCHEMA)
    as_json = client.get(SCHEMA, {"format": "json"})

    assert as_yaml.status_code == as_json.status_code == 200
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert as_json["Content-Type"] == "application/vnd.oai.openapi+json"
    assert yaml.safe_load(as_yaml.content) == json.loads(as_json.content)


def test_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)


def test_schema_generates_without_warnings(tmp_path):
    output = tmp_path / "schema.yaml"

    call_command(
        "spectacular",
        "--custom-settings",
        "executions.schema.SCHEMA_SETTINGS",
        "--validate",
        "--fail-on-warn",
        "--file",
        str(output),
    )

    assert yaml.safe_load(output.read_text())["paths"]


def test_schema_lists_exactly_the_contract_endpoints(schema):
    documented = {
        (method, path) for path, operations in schema["paths"].items() for method in operations
    }

    assert documented == set(CONTRACT)
    assert len(
        {op["operationId"] for ops in schema["paths"].values() for op in ops.values()}
    ) == len(CONTRACT)


@OPERATIONS
def test_each_operation_names_the_scopes_the_contract_requires(schema, method, path):
    documented = operation(schema, method, path)

    assert documented["x-required-scopes"] == CONTRACT[(method, path)]
    for scope in CONTRACT[(method, path)]:
        assert f"`{scope}`" in documented["description"]


@OPERATIONS
def test_each_error_response_is_the_error_envelope(schema, method, path):
    responses = operation(schema, method, path)["responses"]

    errors = {code: response for code, response in responses.items() if code >= "400"}
    assert {"400", "401", "403", "404", "429"} <= set(errors)
    for code, response in errors.items():
        assert response["content"] == {"application/json": {"schema": ERROR_ENVELOPE}}, code
        assert response["description"], code
    assert "insufficient_scope" in errors["403"]["description"]
    assert "resource_not_found" in errors["404"]["description"]


def test_error_envelope_component_has_the_contract_shape(schema):
    envelope = resolve(schema, ERROR_ENVELOPE)
    error = resolve(schema, envelope["properties"]["error"])
    meta = resolve(schema, envelope["properties"]["meta"])

    assert set(envelope["required"]) == {"error", "meta"}
    assert set(error["properties"]) == {"code", "message", "details"}
    assert set(error["required"]) == {"code", "message"}
    assert set(meta["properties"]) == {"request_id", "timestamp"}


@pytest.mark.parametrize(
    ("method", "path", "status", "item", "many"),
    [
        ("get", "/api/v1/workflows", "200", "Workflow", True),
        ("get", "/api/v1/workflows/{workflow_id}", "200", "Workflow", False),
        ("post", "/api/v1/workflows/{workflow_id}/execute", "202", "ExecuteResponse", False),
        ("get", "/api/v1/executions", "200", "Execution", True),
        ("get", "/api/v1/executions/{execution_id}", "200", "Execution", False),
        ("post", "/api/v1/executions/{execution_id}/cancel", "200", "Execution", False),
    ],
)
def test_each_success_response_is_the_data_envelope(schema, method, path, status, item, many):
    responses = operation(schema, method, path)["responses"]
    envelope = resolve(schema, responses[status]["content"]["application/json"]["schema"])

    data = envelope["properties"]["data"]
    expected = {"data", "meta", "pagination"} if many else {"data", "meta"}
    assert set(envelope["properties"]) == expected
    if many:
        data = data["items"]
        pagination = resolve(schema, envelope["properties"]["pagination"])
        assert set(pagination["properties"]) == PAGINATION_FIELDS
    assert data == {"$ref": f"#/components/schemas/{item}"}


def test_resource_components_have_the_contract_fields(schema):
    components = schema["components"]["schemas"]

    assert set(components["Workflow"]["properties"]) == WORKFLOW_FIELDS
    workflow_input = components["WorkflowInput"]
    # The contract's four, then what an input may add: its default and its bounds.
    assert set(workflow_input["properties"]) == {
        "type",
        "label",
        "required",
        "description",
        "default",
        "minimum",
        "maximum",
    }
    assert set(workflow_input["required"]) == {"type", "label", "required", "description"}
    assert set(components["Execution"]["properties"]) == EXECUTION_FIELDS
    assert set(components["NodeRun"]["properties"]) == NODE_FIELDS
    assert set(components["ExecuteResponse"]["properties"]) == {
        "execution_id",
        "workflow_id",
        "status",
        "inputs",
    }
    assert set(components["StatusEnum"]["enum"]) == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    }


def test_execution_list_documents_its_query_parameters(schema):
    parameters = {
        parameter["name"]: parameter
        for parameter in operation(schema, "get", "/api/v1/executions")["parameters"]
    }

    assert set(parameters) == {"page", "per_page", "workflow_id", "status"}
    assert all(parameter["in"] == "query" for parameter in parameters.values())
    assert set(parameters["status"]["schema"]["enum"]) == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    }


def test_security_schemes_are_the_two_ways_to_send_a_key(schema):
    assert schema["components"]["securitySchemes"] == {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "BearerKey": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "fm_live_... / fm_test_...",
        },
    }


@OPERATIONS
def test_each_operation_accepts_either_way_of_sending_the_key(schema, method, path):
    security = operation(schema, method, path)["security"]

    assert sorted(security, key=json.dumps) == [{"ApiKeyHeader": []}, {"BearerKey": []}]


# The event stream's operation ------------------------------------------------------------


def test_event_stream_operation_documents_server_sent_events(schema):
    events = operation(schema, "get", EVENTS_PATH)

    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    assert "204" in events["responses"]
    parameters = {(parameter["in"], parameter["name"]) for parameter in events["parameters"]}
    assert parameters == {
        ("path", "execution_id"),
        ("header", "Last-Event-ID"),
        ("query", "last_event_id"),
        ("query", "token"),
    }


@pytest.mark.parametrize("event", list(EVENT_FIELDS))
def test_event_stream_description_names_each_event_and_its_fields(schema, event):
    description = operation(schema, "get", EVENTS_PATH)["description"]

    [line] = [line for line in description.splitlines() if line.startswith(f"- `{event}`:")]
    for field in EVENT_FIELDS[event]:
        assert re.search(rf"\b{field}\b", line), field


# The Swagger UI page ---------------------------------------------------------------------


def asset_urls(html):
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"', html)


@pytest.mark.django_db
def test_docs_page_uses_no_cdn(client):
    response = client.get(DOCS)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "http://" not in html
    assert "https://" not in html
    assert SCHEMA in html
    urls = asset_urls(html)
    assert any(url.endswith(".js") for url in urls)
    assert any(url.endswith(".css") for url in urls)
    for url in urls:
        assert url.startswith(settings.STATIC_URL), url


@pytest.mark.django_db
def test_docs_assets_are_shipped_by_the_sidecar(client):
    html = client.get(DOCS).content.decode()

    for url in asset_urls(html):
        relative = url.removeprefix(settings.STATIC_URL)
        found = finders.find(relative)
        assert found, url
        assert "drf_spectacular_sidecar" in str(found)


@pytest.mark.django_db
def test_debug_asgi_app_serves_the_docs_assets(client, settings):
    html = client.get(DOCS).content.decode()
    settings.DEBUG = True
    # Run the project's ASGI module afresh, as a DEBUG server process would import it.
    application = runpy.run_path(str(Path(flowmaestro.__file__).with_name("asgi.py")))[
        "application"
    ]

    async def fetch(urls):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            return [await http.get(url) for url in urls]

    urls = asset_urls(html)
    for url, response in zip(urls, async_to_sync(fetch)(urls), strict=True):
        assert response.status_code == 200, url
        assert response.content, url
