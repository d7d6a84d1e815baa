"""``apikeys.compiled``: querysets compiled once, run with each call's values, giving what
the ORM gives; and the hot lookups built on it."""

import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apikeys import keys
from apikeys.auth import key_with_owner
from apikeys.compiled import CompiledQuery
from apikeys.models import APIKey
from executions.grants import APIKeyGrant
from executions.log import read_log
from executions.lookups import (
    EXECUTION_COUNT,
    EXECUTION_PAGE,
    VisibleExecutions,
    visible_execution,
    with_node_runs,
)
from executions.models import Execution
from executions.stream import STREAMED_FIELDS
from tests.runs import completed_run

pytestmark = pytest.mark.django_db


def field_values(instance):
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_a_key_and_its_owner_load_as_the_orm_loads_them_in_one_query(make_key):
    key, raw = make_key(
        scopes=["executions:read", "workflows:read"], expires_at=timezone.now() + timedelta(1)
    )
    key.record_use("203.0.113.9")
    expected = APIKey.objects.select_related("owner").get(pk=key.pk)
    with CaptureQueriesContext(connection) as queries:
        loaded = key_with_owner(key_hash=keys.digest(raw))
        assert field_values(loaded) == field_values(expected)
        assert field_values(loaded.owner) == field_values(expected.owner)
    assert len(queries) == 1
    assert key_with_owner(pk=key.pk).pk == key.pk
    assert key_with_owner(key_hash=keys.digest(raw + "x")) is None


def test_the_stream_sees_only_the_executions_its_grant_may(user, other_user, make_key):
    execution_id = completed_run(user)
    own = APIKeyGrant(make_key()[0])
    others = APIKeyGrant(make_key(owner=other_user)[0])
    tests = APIKeyGrant(make_key(mode="test")[0])
    execution = visible_execution(own, execution_id, STREAMED_FIELDS)
    assert (execution.pk, execution.is_finished) == (execution_id, True)
    assert execution.last_seq == len(read_log(execution_id, 0, 1000))
    assert visible_execution(others, execution_id) is None
    assert visible_execution(tests, execution_id) is None
    staff = SimpleNamespace(owner_id=None, mode=None)  # every owner, both modes
    assert visible_execution(staff, execution_id).pk == execution_id
    assert visible_execution(own, "exec_" + "x" * 100) is None
    assert visible_execution(own, "exec_\x00") is None


def test_an_execution_and_its_node_runs_load_as_the_orm_loads_them(user, make_key):
    execution_id = completed_run(user)
    expected, key = Execution.objects.get(pk=execution_id), make_key()[0]
    with CaptureQueriesContext(connection) as queries:
        [loaded] = with_node_runs(visible_execution(key, execution_id))
    assert len(queries) == 2
    assert field_values(loaded) == field_values(expected)
    assert [field_values(run) for run in loaded.node_runs] == [
        field_values(run) for run in expected.nodes.order_by("started_at", "id")
    ]
    assert len(loaded.node_runs) == 2  # completed_run() runs two nodes


def test_a_page_of_executions_and_their_node_runs_load_as_the_orm_loads_them(
    user, other_user, make_key
):
    mine = [completed_run(user) for _ in range(4)]
    completed_run(other_user)
    key = make_key()[0]
    expected = list(Execution.objects.filter(owner=user).prefetch_related("nodes"))
    assert [e.pk for e in expected] == mine[::-1]
    executions = VisibleExecutions(key)
    assert executions.count() == 4
    with CaptureQueriesContext(connection) as queries:
        pages = [executions[0:3], executions[3:6], executions[9:12]]
    assert len(queries) == 5  # the last page is empty: no node runs to read
    assert EXECUTION_PAGE.compiled and None not in EXECUTION_PAGE.compiled.values()
    assert [[e.pk for e in page] for page in pages] == [mine[:0:-1], mine[:1], []]
    loaded = [*pages[0], *pages[1]]
    assert [field_values(e) for e in loaded] == [field_values(e) for e in expected]
    assert [[field_values(r) for r in e.node_runs] for e in loaded] == [
        [field_values(r) for r in e.nodes.all()] for e in expected
    ]
    assert VisibleExecutions(key, status="failed")[0:20] == []


def test_the_executions_a_viewer_sees_count_as_the_orm_counts_them(user, other_user, make_key):
    for owner in (user, user, other_user):
        completed_run(owner)
    viewers = [make_key()[0], make_key(mode="test")[0], SimpleNamespace(owner_id=None, mode=None)]
    for viewer in viewers:
        for filters in ({}, {"status": "completed"}, {"status": "failed"}, {"workflow_id": "x"}):
            expected = Execution.objects.visible_to(viewer).filter(**filters).count()
            assert VisibleExecutions(viewer, **filters).count() == expected, (viewer, filters)
    assert EXECUTION_COUNT.compiled and None not in EXECUTION_COUNT.compiled.values()


def test_the_log_reads_as_the_orm_reads_it(user):
    execution_id = completed_run(user)
    everything = read_log(execution_id, 0, 1000)
    assert [item.seq for item in everything] == list(range(1, len(everything) + 1))
    assert read_log(execution_id, 2, 2) == everything[2:4]


class Counting:
    """A build function that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, shape, **lookup):
        self.calls += 1
        return APIKey.objects.filter(**lookup).order_by("pk").values_list("pk", "name")[:shape]


def test_a_query_compiles_once_for_each_shape_and_set_of_values_given(make_key):
    first, second = make_key(name="first")[0], make_key(name="second")[0]
    build = Counting()
    query = CompiledQuery(build)
    assert query.rows("default", 10, pk=first.pk) == [(first.pk, "first")]
    assert query.rows("default", 10, pk=second.pk) == [(second.pk, "second")]
    assert build.calls == 1
    assert query.rows("default", 10, name="second") == [(second.pk, "second")]
    assert query.rows("default", 1, owner=first.owner_id) == [(first.pk, "first")]
    assert build.calls == 3


def test_a_slice_compiles_once_and_takes_each_calls_limit_and_offset(make_key):
    keys_by_pk = sorted(make_key(name=f"key {index}")[0].pk for index in range(5))
    calls = []

    def build(shape, offset, limit):
        calls.append(shape)
        return APIKey.objects.order_by("pk").values_list("pk", flat=True)[offset : offset + limit]

    query = CompiledQuery(build)
    pages = [query.rows("default", offset=o, limit=2) for o in (0, 2, 4, 6)]
    assert [[pk for (pk,) in page] for page in pages] == [
        keys_by_pk[0:2],
        keys_by_pk[2:4],
        keys_by_pk[4:],
        [],
    ]
    assert len(calls) == 1


def test_values_the_sql_would_not_take_as_they_are_go_through_the_orm(make_key):
    key = make_key(name="nightly exports")[0]
    build = Counting()
    query = CompiledQuery(build)
    # The ORM turns a prefix into a LIKE pattern, and a UUID into text for a CharField.
    assert query.rows("default", 10, name__startswith="nightly") == [(key.pk, key.name)]
    assert query.rows("default", 10, name__startswith="nightly") == [(key.pk, key.name)]
    assert query.rows("default", 10, name=uuid.uuid4()) == []
    assert build.calls == 4  # the prefix: one compile that fails, then the ORM twice


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's loaders")
def test_timestamps_load_through_the_c_loader_as_djangos_loader_gives_them(user, make_key):
    from psycopg.pq import Format

    from apikeys.compiled import TIMESTAMPTZ, c_timestamp_loader, load_timestamps_in_c

    execution_id = completed_run(user)
    orm = Execution.objects.get(pk=execution_id)
    compiled = visible_execution(make_key()[0], execution_id)
    for name in ("created_at", "started_at", "completed_at"):
        assert getattr(compiled, name) == getattr(orm, name)
        assert getattr(compiled, name).tzinfo is getattr(orm, name).tzinfo
    with connection.cursor() as cursor:
        djangos = cursor.cursor.adapters.get_loader(TIMESTAMPTZ.oid, Format.TEXT)
        load_timestamps_in_c(cursor.cursor)
        assert cursor.cursor.adapters.get_loader(TIMESTAMPTZ.oid, Format.TEXT) is (
            c_timestamp_loader(djangos)
        )
        assert c_timestamp_loader(djangos) is not None  # psycopg-binary is installed
    with connection.cursor() as cursor:  # only that cursor changed
        assert cursor.cursor.adapters.get_loader(TIMESTAMPTZ.oid, Format.TEXT) is djangos
