"""API-key authentication through DRF and the plain async decorator, and the key and
scope primitives under it."""

import hashlib
import logging
import re
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from apikeys import keys
from apikeys.auth import usable_key_scopes
from apikeys.authentication import APIKeyAuthentication
from apikeys.conf import get_config
from apikeys.exceptions import RevokedAPIKey
from apikeys.models import APIKey
from apikeys.scopes import BUILTIN_SCOPES, all_bundles, all_scopes, expand
from apikeys.views import ScopedAPIView
from executions import stream
from tests.contract import CONTRACT
from tests.test_api import EVENTS, fetch_events, finished_execution, new_execution
from tests.test_api import call as call_api
from tests.test_apikeys_admin import add_key, raw_keys_in, run_action, shown_once

DRF_SCOPED = "/test-only/drf/scoped"
DRF_ANY = "/test-only/drf/any"
ASYNC_SCOPED = "/test-only/async/scoped"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
WWW_AUTHENTICATE = 'Bearer realm="api"'

# The scoped views and the scopes each requires. The async view does its database work
# on a pool thread, outside the test's transaction, so tests using it need
# django_db(transaction=True).
SCOPED_VIEWS = pytest.mark.parametrize(
    ("path", "required"),
    [(DRF_SCOPED, ["workflows:read", "executions:read"]), (ASYNC_SCOPED, ["executions:read"])],
    ids=["drf", "async"],
)


def configure(settings, **apikeys):
    """Override entries of the ``APIKEYS`` setting for the current test."""
    settings.APIKEYS = {**settings.APIKEYS, **apikeys}


def call(client, path, raw=None, **headers):
    if raw is not None:
        headers.setdefault("X-API-Key", raw)
    return client.get(path, headers=headers)


def assert_error(response, status, code, details=None):
    """Assert ``response`` is the contract's error envelope; return the decoded body.

    ``details`` None asserts the envelope has no ``details`` at all.
    """
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "meta"}
    error = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    expected = {"code": code, "message": error["message"]}
    if details is not None:
        expected["details"] = details
    assert error == expected
    assert set(body["meta"]) == {"request_id", "timestamp"}
    assert TIMESTAMP.match(body["meta"]["timestamp"])
    assert response["X-Request-ID"] == body["meta"]["request_id"]
    return body


def assert_auth_error(response, code):
    body = assert_error(response, 401, code)
    assert response["WWW-Authenticate"] == WWW_AUTHENTICATE
    uuid.UUID(body["meta"]["request_id"])
    return body


def assert_authenticated(response, path, key):
    assert response.status_code == 200
    assert response.json() == (
        {"owner_id": key.owner_id}
        if path == ASYNC_SCOPED
        else {"owner": key.owner.username, "key": key.prefix}
    )


# The contract's authentication errors, through DRF and through the async decorator.


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_request_without_key_is_invalid_api_key(client, path, required):
    assert_auth_error(call(client, path), "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
@pytest.mark.parametrize(
    "raw",
    [
        "not-a-key",
        "fm_live_tooshort",
        "fm_prod_" + "a" * 32,
        "fm_live_" + "a" * 33,
        "fm_live_" + "-" * 32,
        "FM_LIVE_" + "a" * 32,
    ],
)
def test_malformed_key_is_invalid_api_key(client, path, required, raw):
    assert_auth_error(call(client, path, raw), "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_unknown_well_formed_key_is_invalid_api_key(client, make_key, path, required):
    make_key()
    assert_auth_error(call(client, path, keys.generate("live")), "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_revoked_key_is_revoked_api_key(client, make_key, path, required):
    key, raw = make_key()
    key.revoke()
    assert_auth_error(call(client, path, raw), "revoked_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_expired_key_is_expired_api_key(client, make_key, path, required):
    _, raw = make_key(expires_at=timezone.now() - timedelta(seconds=1))
    assert_auth_error(call(client, path, raw), "expired_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_test_key_is_invalid_when_test_keys_are_refused(client, make_key, settings, path, required):
    key, raw = make_key(mode="test")
    assert_authenticated(call(client, path, raw), path, key)
    configure(settings, ACCEPT_TEST_KEYS=False)
    assert_auth_error(call(client, path, raw), "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_key_of_inactive_owner_is_invalid_api_key(client, make_key, user, path, required):
    _, raw = make_key()
    user.is_active = False
    user.save()
    assert_auth_error(call(client, path, raw), "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_missing_scope_is_insufficient_scope_with_details(client, make_key, path, required):
    _, raw = make_key(scopes=["workflows:read", "agents:read"])
    body = assert_error(
        call(client, path, raw),
        403,
        "insufficient_scope",
        details={
            "required_scopes": required,
            "missing_scopes": ["executions:read"],
            "your_scopes": ["workflows:read", "agents:read"],
        },
    )
    assert "executions:read" in body["error"]["message"]


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_key_holding_exactly_the_required_scopes_is_let_in(client, make_key, path, required):
    key, raw = make_key(scopes=required)
    assert_authenticated(call(client, path, raw), path, key)


# How the key and the request id travel.


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_key_in_x_api_key_header_authenticates(client, make_key, path, required):
    key, raw = make_key()
    response = call(client, path, raw)
    assert_authenticated(response, path, key)
    uuid.UUID(response["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_key_in_bearer_authorization_authenticates(client, make_key, path, required, scheme):
    key, raw = make_key()
    response = client.get(path, headers={"Authorization": f"{scheme} {raw}"})
    assert_authenticated(response, path, key)


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_other_authorization_schemes_are_not_read_as_keys(client, make_key, path, required):
    _, raw = make_key()
    response = client.get(path, headers={"Authorization": f"Token {raw}"})
    assert_auth_error(response, "invalid_api_key")


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_well_formed_incoming_request_id_is_echoed(client, make_key, path, required):
    _, raw = make_key()
    ok = call(client, path, raw, **{"X-Request-ID": "trace-0123456789"})
    assert ok.status_code == 200
    assert ok["X-Request-ID"] == "trace-0123456789"
    failed = call(client, path, **{"X-Request-ID": "trace-abcdefghij"})
    body = assert_error(failed, 401, "invalid_api_key")
    assert body["meta"]["request_id"] == "trace-abcdefghij"


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_malformed_incoming_request_id_is_replaced(client, path, required):
    body = assert_auth_error(
        call(client, path, **{"X-Request-ID": "not ok\t<id>"}), "invalid_api_key"
    )
    assert body["meta"]["request_id"] != "not ok\t<id>"


@pytest.mark.django_db(transaction=True)
def test_async_view_served_under_asgi_answers_with_headers_and_envelopes(async_client, make_key):
    key, raw = make_key(rate_limit_per_minute=5)
    ok = async_to_sync(async_client.get)(ASYNC_SCOPED, headers={"Authorization": f"Bearer {raw}"})
    assert_authenticated(ok, ASYNC_SCOPED, key)
    uuid.UUID(ok["X-Request-ID"])
    assert ok["X-RateLimit-Limit"] == "5"
    assert_auth_error(async_to_sync(async_client.get)(ASYNC_SCOPED), "invalid_api_key")


# The raw key is a secret: never stored, never logged.


def secret_parts(raw):
    """The raw key, its random part, and the part the display prefix does not reveal."""
    return [raw, raw[len(keys.MODE_PREFIXES["live"]) :], raw[keys.PREFIX_LENGTH :]]


def exercise(client, raws):
    """Make successful and failing requests, through both views and both headers; return
    the responses."""
    return [
        response
        for raw in raws
        for path in (DRF_SCOPED, DRF_ANY, ASYNC_SCOPED)
        for response in (
            call(client, path, raw),
            client.get(path, headers={"Authorization": f"Bearer {raw}"}),
            call(client, path, raw + "x"),
        )
    ]


@pytest.mark.django_db(transaction=True)
def test_raw_key_is_stored_in_no_column_of_any_table(client, make_key, other_user):
    made = [
        make_key(),
        make_key(mode="test"),
        make_key(owner=other_user, scopes=["agents:read"]),
        make_key(rate_limit_per_minute=1),
    ]
    revoked, raw_revoked = make_key(name="revoked")
    revoked.revoke()
    raws = [raw for _, raw in made] + [raw_revoked]
    client.force_login(other_user)  # puts a row in the sessions table
    exercise(client, raws)

    values = []
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names()
        assert {APIKey._meta.db_table, "django_session"} <= set(tables)
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            values += [value for row in cursor.fetchall() for value in row]
    stored = "\n".join(
        bytes(v).decode(errors="replace") if isinstance(v, bytes | memoryview) else str(v)
        for v in values
    )
    # The scan reads every column: it finds what is meant to be stored.
    assert all(keys.digest(raw) in stored for raw in raws)
    for raw in raws:
        for secret in secret_parts(raw):
            assert secret not in stored


def token_parts(token):
    """A stream token and its signature, the part that cannot be made without the key."""
    return [token, token.rsplit(":", 1)[-1]]


class Answers:
    """Every answer a test got (responses, streams, command output) as text, each with the
    secrets it was created to show (the raw key an add form shows once, the stream token
    that ``POST .../stream-token`` mints, which ``tokens`` collects)."""

    def __init__(self):
        self.seen, self.tokens = [], []

    def add(self, response, body=None, shows=()):
        shows = set(shows)
        if response.status_code == 201 and response.get("Content-Type") == "application/json":
            token = response.json()["data"]["token"]
            self.tokens.append(token)
            shows.update(token_parts(token))
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        body = response.content if body is None and not response.streaming else body
        self.seen.append((f"{headers}\n\n{body.decode(errors='replace')}", shows))
        return response

    def add_text(self, text):
        self.seen.append((text, set()))

    def assert_hold_none_of(self, secrets):
        for text, shows in self.seen:
            for secret in set(secrets) - shows:
                assert secret not in text


@pytest.mark.django_db(transaction=True)
def test_no_secret_reaches_a_log_record_an_answer_or_a_page_after_its_creation(
    client, admin_client, make_key, user, other_user, settings, caplog, monkeypatch
):
    settings.DEBUG = True  # SQL and its parameters are logged at DEBUG as well
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")  # Django's default config stops at INFO
    answers = Answers()

    # Created: in the admin's add form, by createapikey, through the model.
    response = add_key(admin_client, user, bundles=["full-access"])
    raw_admin = shown_once(response)
    answers.add(response, shows=secret_parts(raw_admin))
    created = StringIO()
    call_command(
        "createapikey",
        "--owner",
        user.username,
        "--name",
        "cli",
        "--bundle",
        "full-access",
        stdout=created,
        stderr=StringIO(),
    )
    raw_cli = created.getvalue().splitlines()[-1]
    revoked, raw_revoked = make_key()
    revoked.revoke()
    raw_ok, raw_test = make_key()[1], make_key(mode="test")[1]
    raws = [
        raw_admin,
        raw_cli,
        raw_ok,
        raw_test,
        raw_revoked,
        make_key(scopes=["agents:read"])[1],
        make_key(rate_limit_per_minute=1)[1],
        make_key(expires_at=timezone.now() - timedelta(days=1))[1],
    ]

    # Used, and refused, on the apps' test views (both headers, malformed, test keys
    # refused, the rate-limit store down) and on every endpoint of the contract.
    for response in exercise(client, raws):
        answers.add(response)
    working = settings.APIKEYS
    configure(settings, ACCEPT_TEST_KEYS=False)
    for response in exercise(client, [raw_test]):
        answers.add(response)
    configure(settings, RATE_LIMIT_REDIS_URL="redis://127.0.0.1:1/0", RATE_LIMIT_FAIL_OPEN=False)
    for response in exercise(client, [raw_ok]):
        answers.add(response)
    settings.APIKEYS = working
    mine, theirs = finished_execution(user).execution_id, new_execution(other_user).execution_id
    for raw in raws:
        for execution_id in (mine, theirs):
            for (method, path), _ in CONTRACT.items():
                path = path.format(workflow_id="wf_demo", execution_id=execution_id)
                if path.endswith("/events"):
                    answers.add(*fetch_events(path, raw))
                    answers.add(*fetch_events(path, **{"Authorization": f"Bearer {raw}"}))
                else:
                    answers.add(call_api(client, method, path, raw))
                    answers.add(call_api(client, method, path, Authorization=f"Bearer {raw}"))
    answers.add(call_api(client, "post", "/api/v1/workflows/wf_demo/execute", raw_ok, content="{"))

    # Stream tokens: minted, used, refused (another execution's, forged, their key revoked).
    tokens = [
        answers.add(
            call_api(client, "post", f"/api/v1/executions/{mine}/stream-token", raw)
        ).json()["data"]["token"]
        for raw in (raw_ok, raw_cli)
    ]
    events = EVENTS.format(id=mine)
    answers.add(*fetch_events(f"{events}?token={tokens[0]}"))
    answers.add(*fetch_events(f"{EVENTS.format(id=theirs)}?token={tokens[0]}"))
    answers.add(*fetch_events(f"{events}?token={tokens[0][:-2]}xx"))
    answers.add(*fetch_events(f"{events}?token={signing.dumps({'forged': True})}"))
    answers.add(*fetch_events(f"{events}?token={tokens[0]}", **{"Last-Event-ID": "x"}))
    answers.add(*fetch_events(f"{events}?token={raw_ok}"))  # a key where a token goes

    # Crashes, with a key and with a token: a 500 in the envelope, the crash logged.
    def crash(*args, **kwargs):
        raise RuntimeError("crash")

    with monkeypatch.context() as patch:
        patch.setattr(stream, "last_event_id", crash)
        answers.add(*fetch_events(f"{events}?token={tokens[0]}"))
        answers.add(*fetch_events(events, raw_ok))

    # The pages and the admin, after the keys were created.
    client.force_login(user)
    for path in ("/executions/", f"/executions/{mine}/", f"/executions/{theirs}/"):
        answers.add(client.get(path))
    answers.add(client.post(f"/executions/{mine}/cancel", follow=True))
    changelist = reverse("admin:apikeys_apikey_changelist")
    for key in APIKey.objects.all():
        answers.add(admin_client.get(reverse("admin:apikeys_apikey_change", args=[key.pk])))
        answers.add(admin_client.get(changelist, {"q": key.prefix}))

    # Rotated and revoked: in the admin, through the model, by revokeapikey.
    cli_key = APIKey.objects.get(key_hash=keys.digest(raw_cli))
    response = run_action(admin_client, "rotate_keys", [cli_key])
    [raw_rotated] = raw_keys_in(response)
    answers.add(response, shows=secret_parts(raw_rotated))
    rotated_key = APIKey.objects.get(key_hash=keys.digest(raw_rotated))
    answers.add(run_action(admin_client, "revoke_keys", [rotated_key]))
    ok_key = APIKey.objects.get(key_hash=keys.digest(raw_ok))
    _, raw_replacement = ok_key.rotate()
    admin_key = APIKey.objects.get(key_hash=keys.digest(raw_admin))
    revoked_out = StringIO()
    call_command("revokeapikey", admin_key.prefix, stdout=revoked_out)
    call_command("revokeapikey", raw_replacement, stdout=revoked_out)
    answers.add_text(revoked_out.getvalue())
    raws += [raw_rotated, raw_replacement]
    for raw in (raw_cli, raw_rotated, raw_ok, raw_replacement, raw_admin):
        for response in exercise(client, [raw]):
            answers.add(response)
        answers.add(*fetch_events(f"{events}?token={tokens[1]}"))
        answers.add(*fetch_events(events, raw))
    answers.add(admin_client.get(changelist))

    logged = caplog.text + "".join(repr(vars(record)) for record in caplog.records)
    # The lookups' SQL parameters were captured, so the search below covers them too.
    assert keys.digest(raw_ok) in logged
    assert "RuntimeError" in logged
    secrets = [
        *(part for raw in raws for part in secret_parts(raw)),
        *(part for token in answers.tokens for part in token_parts(token)),
        settings.SECRET_KEY,
    ]
    for secret in secrets:
        assert secret not in logged
    answers.assert_hold_none_of(secrets)


# Authenticating costs one query; last_used_* is written at most once per interval.


@pytest.mark.django_db
def test_first_request_of_a_fresh_key_costs_a_lookup_and_a_last_used_update(client, make_key):
    _, raw = make_key()
    with CaptureQueriesContext(connection) as queries:
        assert call(client, DRF_ANY, raw).status_code == 200
    assert len(queries) == 2
    lookup, update = (q["sql"] for q in queries)
    assert lookup.startswith("SELECT")
    assert update.startswith("UPDATE")
    assert "last_used_at" in update


@pytest.mark.django_db
def test_authenticating_again_within_the_interval_costs_one_query(
    client, make_key, django_assert_num_queries
):
    _, raw = make_key()
    assert call(client, DRF_ANY, raw).status_code == 200
    with django_assert_num_queries(1):
        assert call(client, DRF_ANY, raw).status_code == 200


@pytest.mark.django_db
def test_last_used_at_is_not_rewritten_within_the_interval(client, make_key):
    key, raw = make_key()
    assert key.last_used_at is None
    call(client, DRF_ANY, raw)
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    call(client, DRF_ANY, raw)
    key.refresh_from_db()
    assert key.last_used_at == first


@pytest.mark.django_db
def test_last_used_at_is_rewritten_once_older_than_the_interval(client, make_key):
    key, raw = make_key()
    call(client, DRF_ANY, raw)
    stale = timezone.now() - timedelta(seconds=get_config()["LAST_USED_INTERVAL"] + 1)
    APIKey.objects.filter(pk=key.pk).update(last_used_at=stale)
    call(client, DRF_ANY, raw)
    key.refresh_from_db()
    assert key.last_used_at > stale


@pytest.mark.django_db
def test_last_used_ip_is_recorded(client, make_key):
    key, raw = make_key()
    client.get(DRF_ANY, headers={"X-API-Key": raw}, REMOTE_ADDR="203.0.113.7")
    key.refresh_from_db()
    assert key.last_used_ip == "203.0.113.7"


@pytest.mark.django_db
@pytest.mark.parametrize("remote_addr", ["unknown", "203.0.113.7, 10.0.0.1"])
def test_request_whose_remote_addr_is_not_an_ip_is_served(client, make_key, remote_addr):
    key, raw = make_key()
    response = client.get(DRF_ANY, headers={"X-API-Key": raw}, REMOTE_ADDR=remote_addr)
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert key.last_used_ip is None


# Revocation and rotation.


@pytest.mark.django_db(transaction=True)
@SCOPED_VIEWS
def test_revoked_key_stops_working_on_the_next_request(client, make_key, path, required):
    key, raw = make_key()
    assert_authenticated(call(client, path, raw), path, key)
    APIKey.objects.get(pk=key.pk).revoke()
    assert_auth_error(call(client, path, raw), "revoked_api_key")


@pytest.mark.django_db
def test_revoking_twice_keeps_the_first_time(make_key):
    key, _ = make_key()
    stale = APIKey.objects.get(pk=key.pk)
    key.revoke()
    first = key.revoked_at
    assert first is not None
    key.revoke()
    assert key.revoked_at == first
    stale.revoke()
    APIKey.objects.get(pk=key.pk).revoke()
    assert APIKey.objects.get(pk=key.pk).revoked_at == first
    assert APIKey.objects.get(pk=key.pk).status == APIKey.Status.REVOKED


@pytest.mark.django_db
def test_revoking_through_a_stale_instance_reports_the_first_time(make_key):
    key, _ = make_key()
    stale = APIKey.objects.get(pk=key.pk)
    key.revoke()
    stale.revoke()
    assert stale.revoked_at == key.revoked_at


@pytest.mark.django_db
def test_rotate_gives_a_working_key_with_the_same_settings_and_revokes_the_old(
    client, make_key, other_user
):
    old, old_raw = make_key(
        owner=other_user,
        name="deploy bot",
        mode="test",
        scopes=["workflows:read", "executions:read"],
        expires_at=timezone.now() + timedelta(days=30),
        rate_limit_per_minute=7,
        rate_limit_per_day=70,
    )
    new, new_raw = old.rotate()

    assert new.pk != old.pk
    assert new_raw != old_raw
    assert new_raw.startswith("fm_test_")
    fields = ["owner_id", "name", "mode", "scopes", "expires_at"]
    fields += ["rate_limit_per_minute", "rate_limit_per_day"]
    new.refresh_from_db()
    old.refresh_from_db()
    assert {f: getattr(new, f) for f in fields} == {f: getattr(old, f) for f in fields}
    assert new.revoked_at is None
    assert old.revoked_at is not None

    response = call(client, DRF_SCOPED, new_raw)
    assert response.status_code == 200
    assert response.json() == {"owner": "bob", "key": new.prefix}
    assert_auth_error(call(client, DRF_SCOPED, old_raw), "revoked_api_key")


@pytest.mark.django_db
def test_rotation_that_cannot_create_the_new_key_leaves_the_old_one_working(
    client, make_key, settings
):
    configure(settings, SCOPES={"reports:read": "Read reports"})
    old, old_raw = make_key(scopes=["reports:read", "executions:read"])
    configure(settings, SCOPES={})  # the host stops registering the scope
    with pytest.raises(ValidationError):
        old.rotate()
    old.refresh_from_db()
    assert old.revoked_at is None
    assert call(client, DRF_ANY, old_raw).status_code == 200


@pytest.mark.django_db
def test_rotating_an_expired_key_gives_a_key_that_works_and_keeps_a_future_expiry(client, make_key):
    expired, _ = make_key(expires_at=timezone.now() - timedelta(days=1))
    replacement, raw = expired.rotate()
    assert replacement.expires_at is None
    assert call(client, DRF_ANY, raw).status_code == 200
    expiring, _ = make_key(expires_at=timezone.now() + timedelta(days=7))
    assert expiring.rotate()[0].expires_at == expiring.expires_at


@pytest.mark.django_db
def test_usable_key_scopes_leaves_out_revoked_expired_deleted_and_deactivated_keys(
    make_key, user, other_user
):
    revoked, _ = make_key()
    expired, _ = make_key()
    deleted, _ = make_key()
    deactivated, _ = make_key(owner=other_user)
    active, _ = make_key(scopes=["executions:read"])
    everyone = [revoked.pk, expired.pk, deleted.pk, deactivated.pk, active.pk]
    assert set(usable_key_scopes(everyone)) == set(everyone)
    revoked.revoke()
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    APIKey.objects.filter(pk=deleted.pk).delete()
    type(other_user).objects.filter(pk=other_user.pk).update(is_active=False)
    assert usable_key_scopes(everyone) == {active.pk: ["executions:read"]}


@pytest.mark.django_db
def test_usable_key_scopes_answers_the_scopes_held_now(make_key):
    key, _ = make_key(scopes=["executions:read", "workflows:read"])
    assert usable_key_scopes([key.pk]) == {key.pk: ["executions:read", "workflows:read"]}
    APIKey.objects.filter(pk=key.pk).update(scopes=["workflows:read"])
    assert usable_key_scopes([key.pk]) == {key.pk: ["workflows:read"]}


# Raw keys: format, display prefix and stored digest.


@pytest.mark.parametrize("mode", ["live", "test"])
def test_generated_key_is_mode_prefix_and_32_base62_characters(mode):
    raw = keys.generate(mode)
    assert re.fullmatch(rf"fm_{mode}_[A-Za-z0-9]{{32}}", raw)
    assert keys.mode_of(raw) == mode


def test_display_prefix_is_the_first_12_characters():
    raw = keys.generate("live")
    assert keys.display_prefix(raw) == raw[:12]
    assert re.fullmatch(r"fm_live_[A-Za-z0-9]{4}", keys.display_prefix(raw))


def test_digest_is_sha256_with_its_algorithm_named():
    raw = keys.generate("live")
    stored = keys.digest(raw)
    assert re.fullmatch(r"sha256\$[0-9a-f]{64}", stored)
    assert stored == "sha256$" + hashlib.sha256(raw.encode()).hexdigest()
    assert keys.matches(raw, stored)
    assert not keys.matches(keys.generate("live"), stored)


@pytest.mark.parametrize(
    "raw", ["fm_live_short", "fm_live_" + "a" * 31 + "-", "x" + keys.generate("live")]
)
def test_mode_of_rejects_malformed_keys(raw):
    assert keys.mode_of(raw) is None


def test_mode_of_rejects_a_key_with_a_trailing_newline():
    assert keys.mode_of(keys.generate("live") + "\n") is None


def test_generated_keys_differ_across_1000_generations():
    assert len({keys.generate("live") for _ in range(1000)}) == 1000


@pytest.mark.django_db
def test_create_key_stores_the_display_prefix_and_digest_only(make_key):
    key, raw = make_key()
    key.refresh_from_db()
    assert key.prefix == raw[:12]
    assert key.key_hash == keys.digest(raw)


# Scopes and bundles.


def test_read_only_bundle_is_every_read_scope():
    assert all_bundles()["read-only"] == [s for s in BUILTIN_SCOPES if s.endswith(":read")]
    assert len(all_bundles()["read-only"]) == 7


def test_workflow_executor_bundle_runs_and_follows_workflows():
    assert all_bundles()["workflow-executor"] == [
        "workflows:read",
        "workflows:execute",
        "executions:read",
        "executions:cancel",
    ]


def test_full_access_bundle_is_every_scope():
    assert all_bundles()["full-access"] == list(BUILTIN_SCOPES)
    assert len(BUILTIN_SCOPES) == 14


def test_expand_merges_scopes_and_bundles_in_registry_order():
    assert expand(["executions:cancel", "agents:read"], ["read-only"]) == [
        "workflows:read",
        "executions:read",
        "executions:cancel",
        "agents:read",
        "threads:read",
        "triggers:read",
        "knowledge-bases:read",
        "webhooks:read",
    ]


def test_expand_rejects_an_unknown_bundle_and_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown bundle: admin") as excinfo:
        expand(bundles=["admin"])
    for bundle in ("read-only", "workflow-executor", "full-access"):
        assert bundle in str(excinfo.value)


def test_expand_rejects_an_unknown_scope():
    with pytest.raises(ValueError, match="Unknown scope: workflows:delete"):
        expand(["workflows:read", "workflows:delete"])


@pytest.mark.django_db
def test_host_registered_scopes_and_bundles_are_usable(settings, make_key, client):
    configure(
        settings,
        SCOPES={"reports:read": "Read reports", "reports:export": "Export reports"},
        BUNDLES={"reporting": ["reports:read", "reports:export", "executions:read"]},
    )
    assert list(all_scopes())[-2:] == ["reports:read", "reports:export"]
    assert "reports:read" in all_bundles()["read-only"]
    assert "reports:export" not in all_bundles()["read-only"]
    assert all_bundles()["full-access"][-2:] == ["reports:read", "reports:export"]
    scopes = expand(bundles=["reporting"])
    assert scopes == ["executions:read", "reports:read", "reports:export"]

    key, raw = make_key(scopes=scopes)
    key.full_clean()
    response = call(client, DRF_SCOPED, raw)
    assert_error(
        response,
        403,
        "insufficient_scope",
        details={
            "required_scopes": ["workflows:read", "executions:read"],
            "missing_scopes": ["workflows:read"],
            "your_scopes": scopes,
        },
    )


def test_registered_scopes_go_away_with_the_setting(settings):
    apikeys = {**settings.APIKEYS, "SCOPES": {"reports:read": "Read reports"}}
    with override_settings(APIKEYS={**apikeys, "BUNDLES": {"reporting": ["reports:read"]}}):
        assert "reports:read" in all_scopes()
        assert "reporting" in all_bundles()
    assert "reports:read" not in all_scopes()
    assert "reporting" not in all_bundles()


@pytest.mark.django_db
def test_unknown_scope_is_rejected_by_full_clean(make_key, user):
    key, _ = make_key()
    key.scopes = ["workflows:read", "reports:read"]
    with pytest.raises(ValidationError, match="Unknown scope: reports:read") as excinfo:
        key.full_clean()
    assert "scopes" in excinfo.value.message_dict
    with pytest.raises(ValidationError, match="Unknown scope: nope:read"):
        APIKey.objects.create_key(owner=user, name="bad", scopes=["nope:read"])
    assert APIKey.objects.filter(name="bad").count() == 0


# APIKeyAuthentication follows DRF's contract, so other authenticators can stand beside it.


class KeyOrSessionView(ScopedAPIView):
    authentication_classes = [APIKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"user": request.user.username, "by_key": request.auth is not None})


class CustomHeaderAuthentication(APIKeyAuthentication):
    header = "X-Partner-Key"
    keyword = "Key"


def drf_request(**headers):
    return APIRequestFactory().get("/", headers=headers)


@pytest.mark.django_db
def test_api_key_authentication_returns_none_for_a_request_without_a_key():
    assert APIKeyAuthentication().authenticate(Request(drf_request())) is None


@pytest.mark.django_db
def test_a_bearer_credential_of_another_scheme_is_left_to_the_next_authenticator():
    request = Request(drf_request(Authorization="Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"))
    assert APIKeyAuthentication().authenticate(request) is None


@pytest.mark.django_db
def test_a_key_that_is_sent_and_wrong_still_raises(make_key):
    key, raw = make_key()
    key.revoke()
    with pytest.raises(RevokedAPIKey):
        APIKeyAuthentication().authenticate(Request(drf_request(**{"X-API-Key": raw})))


@pytest.mark.django_db
def test_a_session_authenticates_beside_api_keys_on_a_view_that_lists_both(user, make_key):
    _, raw = make_key()
    view = KeyOrSessionView.as_view()
    by_key = view(drf_request(**{"X-API-Key": raw}))
    assert by_key.data == {"user": user.username, "by_key": True}
    by_session = drf_request()
    by_session.user = user  # as AuthenticationMiddleware does for a logged-in session
    assert view(by_session).data == {"user": user.username, "by_key": False}


@pytest.mark.django_db
def test_header_and_keyword_are_class_attributes_a_subclass_can_change(user, make_key):
    key, raw = make_key()
    custom = CustomHeaderAuthentication()
    assert custom.authenticate(Request(drf_request(**{"X-Partner-Key": raw}))) == (user, key)
    assert custom.authenticate(Request(drf_request(Authorization=f"Key {raw}"))) == (user, key)
    assert custom.authenticate(Request(drf_request(**{"X-API-Key": raw}))) is None
    assert custom.authenticate_header(None) == 'Key realm="api"'


class HostView(APIView):
    """A host's own view: its exception handler is DRF's default, not ours."""

    authentication_classes = [APIKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"user": request.user.username})


@pytest.mark.django_db
def test_a_host_view_answering_errors_its_own_way_keeps_the_www_authenticate_header(make_key):
    key, raw = make_key()
    key.revoke()
    response = HostView.as_view()(drf_request(**{"X-API-Key": raw}))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert response.data == {"detail": "This API key has been revoked."}
