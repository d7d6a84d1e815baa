"""schemathesis against the API's own OpenAPI schema and a running server, with a key and
without: no 500, no answer that breaks the schema, a bounded number of examples."""

import uuid

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from executions.schema import SCHEMA_SETTINGS
from tests.contract import CONTRACT
from tests.live_server import live_server


def generated_schema():
    with patched_settings(SCHEMA_SETTINGS):
        return SchemaGenerator().get_schema(request=None, public=True)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(request):
    """One uvicorn server for the module, started once the test database exists."""
    started = []
    yield started
    if started:
        started[0].__exit__(None, None, None)


@pytest.fixture
def target(server, make_key):
    """The server's URL and a full-access key with room to spare in its rate limits."""
    if not server:
        context = live_server("uvicorn", APIKEYS_RATE_LIMIT_KEY_PREFIX=f"fuzz:{uuid.uuid4().hex}")
        server.append(context)
        server.append(context.__enter__())
    _, raw = make_key(rate_limit_per_minute=1_000_000, rate_limit_per_day=10_000_000)
    return server[1].url, raw


EXAMPLES = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


def operations():
    schema = schemathesis.openapi.from_dict(generated_schema())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture(scope="module")
def all_operations():
    return operations()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
def test_every_answer_is_what_the_schema_says(target, all_operations, with_key):
    url, raw = target
    headers = {"X-API-Key": raw} if with_key else {}
    assert len(all_operations) == len(CONTRACT)
    for operation in all_operations:

        @EXAMPLES
        @given(case=operation.as_strategy())
        def answers_as_the_schema_says(case):
            response = case.call(base_url=url, headers=headers, timeout=10)
            case.validate_response(response, checks=CHECKS)

        answers_as_the_schema_says()
