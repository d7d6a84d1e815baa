"""The ways into the event stream (``executions.grants``): API keys, the site's session,
stream tokens (``executions.tokens``), and a kind of grant of the tests' own, in process
through Django's ``AsyncClient``."""

import json
import logging
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import signing
from django.test import AsyncClient, Client
from django.utils import timezone

from apikeys.asyncdb import run_in_short_session as db
from apikeys.models import APIKey
from executions import tokens
from executions.grants import APIKeyGrant, SessionGrant
from tests.hub import eventually
from tests.live_server import events_url, expected_body
from tests.runs import completed_run, running
from tests.streams import assert_error, get

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("settle_cancelled_tasks"),
]

KEEPALIVE = 0.3


@pytest.fixture(autouse=True)
def stream_settings(settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "KEEPALIVE_INTERVAL": KEEPALIVE}
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}


async def logged_in(user):
    client = AsyncClient()
    # On a pool thread, whose connection run_in_short_session closes (aforce_login would
    # leave one open on asgiref's sync thread).
    await db(client.force_login, user)
    return client


# The session: a browser on the site's own origin.


@pytest.mark.parametrize("mode", ["live", "test"])
async def test_a_logged_in_user_streams_its_own_executions_in_both_modes(user, connect, mode):
    recorder = await db(running, user, mode=mode)
    stream = await connect(recorder.execution_id, None, client=await logged_in(user))
    await stream.wait_for(lambda s: s.ids == [1])
    await db(recorder.complete, {})
    assert await stream.end() == await db(expected_body, recorder.execution_id, "running")


async def test_another_users_execution_is_a_404_to_a_session(user, other_user):
    execution_id = await db(completed_run, other_user)
    response = await get(execution_id, client=await logged_in(user))
    assert_error(response, 404, "resource_not_found")


async def test_a_staff_session_streams_every_execution(user, other_user, connect):
    other_user.is_staff = True
    await db(other_user.save)
    execution_id = await db(completed_run, user)
    stream = await connect(execution_id, None, client=await logged_in(other_user))
    assert await stream.end() == await db(expected_body, execution_id, "completed")


async def test_no_session_and_no_key_is_invalid_api_key(user):
    execution_id = await db(completed_run, user)
    assert_error(await get(execution_id), 401, "invalid_api_key")


async def test_a_key_and_a_session_together_are_read_as_the_key(user, other_user, make_key):
    _, raw = await db(make_key, owner=other_user)
    execution_id = await db(completed_run, user)
    response = await get(execution_id, raw, client=await logged_in(user))
    assert_error(response, 404, "resource_not_found")


async def deactivate(user):
    user.is_active = False
    await db(user.save)


async def change_password(user):
    user.set_password("a-new-password-2")
    await db(user.save)


@pytest.mark.parametrize("change", [deactivate, change_password], ids=["deactivated", "password"])
async def test_a_sessions_stream_ends_when_its_user_may_no_longer_read(user, connect, change):
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, None, client=await logged_in(user))
    await stream.wait_for(lambda s: s.ids == [1])
    await change(user)
    await stream.end(within=10 * KEEPALIVE)


async def test_a_staff_sessions_stream_ends_when_its_user_is_no_longer_staff(
    user, other_user, connect
):
    other_user.is_staff = True
    await db(other_user.save)
    recorder = await db(running, user)
    stream = await connect(recorder.execution_id, None, client=await logged_in(other_user))
    await stream.wait_for(lambda s: s.ids == [1])
    other_user.is_staff = False
    await db(other_user.save)
    await stream.end(within=10 * KEEPALIVE)


async def test_one_recheck_answers_each_of_many_streams_with_its_own_keys_scopes_now(
    user, make_key
):
    kept, _ = await db(make_key, scopes=["executions:read"])
    narrowed, _ = await db(make_key, scopes=["executions:read", "executions:cancel"])
    revoked, _ = await db(make_key)
    grants = {key: [APIKeyGrant(key) for _ in range(3)] for key in (kept, narrowed, revoked)}
    await db(APIKey.objects.filter(pk=narrowed.pk).update, scopes=["workflows:read"])
    await db(revoked.revoke)
    held = await db(
        APIKeyGrant.current_scopes, [grant for of_key in grants.values() for grant in of_key]
    )
    assert held == {
        **{grant: {"executions:read"} for grant in grants[kept]},
        **{grant: {"workflows:read"} for grant in grants[narrowed]},
    }


async def test_one_recheck_of_many_session_streams_follows_each_session(user, other_user):
    await db(user.refresh_from_db)
    current = user.get_session_auth_hash()
    grants = [SessionGrant(user, current), SessionGrant(user, None), SessionGrant(user, "stale")]
    others = [SessionGrant(other_user, other_user.get_session_auth_hash()) for _ in range(2)]
    await deactivate(other_user)
    held = await db(SessionGrant.current_scopes, [*grants, *others])
    assert held == {grants[0]: {"executions:read"}, grants[1]: {"executions:read"}}


async def test_the_pages_and_the_stream_see_the_same_executions_through_a_session(user):
    assert (SessionGrant.for_user(user).owner_id, SessionGrant.for_user(user).mode) == (
        user.pk,
        None,
    )
    user.is_staff = True
    assert SessionGrant.for_user(user).owner_id is None


# Stream tokens: a browser's EventSource on another origin.


async def post(client, path, **headers):
    """POST to a (sync) REST view with the sync test ``client``, on a pool thread whose
    connection is closed after (the test client keeps request connections open)."""
    return await db(client.post, path, headers=headers)


async def mint(client, execution_id, raw=None):
    headers = {} if raw is None else {"X-API-Key": raw}
    return await post(client, f"/api/v1/executions/{execution_id}/stream-token", **headers)


async def token_for(execution_id, raw):
    response = await mint(Client(), execution_id, raw)
    assert response.status_code == 201, response.content
    return response.json()["data"]["token"]


async def test_a_key_mints_a_token_whose_url_streams_the_execution_with_no_header(
    user, raw_key, connect
):
    execution_id = await db(completed_run, user)
    response = await mint(Client(), execution_id, raw_key)
    assert response.status_code == 201
    data = response.json()["data"]
    assert set(data) == {"token", "expires_at", "url"}
    expires_at = timezone.datetime.fromisoformat(data["expires_at"])
    assert timedelta(seconds=295) < expires_at - timezone.now() <= timedelta(seconds=300)
    url = urlsplit(data["url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "testserver", events_url(execution_id))
    assert parse_qs(url.query) == {"token": [data["token"]]}
    stream = await connect(execution_id, None, query=f"?{url.query}")
    assert await stream.end() == await db(expected_body, execution_id, "completed")


async def test_minting_a_token_follows_the_keys_owner_mode_and_scope_rules(
    user, other_user, make_key
):
    execution_id = await db(completed_run, user)
    _, others = await db(make_key, owner=other_user)
    _, test_key = await db(make_key, mode="test")
    _, no_read = await db(make_key, scopes=["workflows:read"])
    client = Client()
    assert (await mint(client, execution_id, others)).status_code == 404
    assert (await mint(client, execution_id, test_key)).status_code == 404
    assert (await mint(client, "exec_missing", test_key)).status_code == 404
    assert (await mint(client, execution_id, no_read)).status_code == 403
    assert (await mint(client, execution_id)).status_code == 401


async def test_a_session_cannot_mint_a_token(user):
    execution_id = await db(completed_run, user)
    client = Client()
    await db(client.force_login, user)
    response = await mint(client, execution_id)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_a_token_opens_only_the_stream_of_its_own_execution(user, raw_key):
    execution_id, other_id = await db(completed_run, user), await db(completed_run, user)
    token = await token_for(execution_id, raw_key)
    response = await get(other_id, query=f"?token={token}")
    error = assert_error(response, 401, "invalid_stream_token")
    assert token not in json.dumps(error)


async def test_a_token_opens_no_other_endpoint(user, raw_key):
    execution_id = await db(completed_run, user)
    token = await token_for(execution_id, raw_key)
    response = await db(Client().get, f"/api/v1/executions/{execution_id}?token={token}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        lambda token: "garbage",
        lambda token: "",
        lambda token: token * 20,
        lambda token: signing.dumps({"execution": "x", "key": 1}, salt="another.salt"),
    ],
    ids=["tampered", "garbage", "empty", "too-long", "other-salt"],
)
async def test_a_malformed_or_forged_token_is_invalid_stream_token(user, raw_key, forge):
    execution_id = await db(completed_run, user)
    token = forge(await token_for(execution_id, raw_key))
    assert_error(await get(execution_id, query=f"?token={token}"), 401, "invalid_stream_token")


async def test_a_token_past_its_life_is_expired_stream_token(user, raw_key, monkeypatch):
    execution_id = await db(completed_run, user)
    minted_at = signing.time.time() - 301
    monkeypatch.setattr(signing.time, "time", lambda: minted_at)
    token = await token_for(execution_id, raw_key)
    monkeypatch.undo()
    assert_error(await get(execution_id, query=f"?token={token}"), 401, "expired_stream_token")


async def test_the_token_life_is_a_setting(user, raw_key, settings, monkeypatch):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "STREAM_TOKEN_TTL": 30}
    execution_id = await db(completed_run, user)
    minted_at = signing.time.time() - 31
    monkeypatch.setattr(signing.time, "time", lambda: minted_at)
    token = await token_for(execution_id, raw_key)
    monkeypatch.undo()
    assert_error(await get(execution_id, query=f"?token={token}"), 401, "expired_stream_token")


async def revoke(key):
    await db(key.revoke)


async def expire(key):
    key.expires_at = timezone.now() - timedelta(seconds=1)
    await db(key.save)


@pytest.mark.parametrize(
    ("change", "code"),
    [(revoke, "revoked_api_key"), (expire, "expired_api_key")],
    ids=["revoked", "expired"],
)
async def test_a_token_of_a_key_that_is_no_longer_usable_is_refused(user, make_key, change, code):
    key, raw = await db(make_key)
    execution_id = await db(completed_run, user)
    token = await token_for(execution_id, raw)
    await change(key)
    assert_error(await get(execution_id, query=f"?token={token}"), 401, code)


async def test_a_tokens_open_stream_outlives_the_token_but_ends_with_its_key(
    user, make_key, connect, settings
):
    key, raw = await db(make_key)
    recorder = await db(running, user)
    token = await token_for(recorder.execution_id, raw)
    stream = await connect(recorder.execution_id, None, query=f"?token={token}")
    await stream.wait_for(lambda s: s.ids == [1])
    settings.EXECUTIONS = {**settings.EXECUTIONS, "STREAM_TOKEN_TTL": 0}
    await db(recorder.progress, completed_nodes=1, total_nodes=2)
    await stream.wait_for(lambda s: s.ids == [1, 2])
    await revoke(key)
    await stream.end(within=10 * KEEPALIVE)


async def test_a_token_never_reaches_the_logs(user, raw_key, caplog):
    caplog.set_level(logging.DEBUG)
    execution_id, other_id = await db(completed_run, user), await db(completed_run, user)
    token = await token_for(execution_id, raw_key)
    await get(other_id, query=f"?token={token}")
    await get(execution_id, query=f"?token={token}x")
    assert caplog.records
    assert token not in caplog.text


async def test_a_token_names_its_execution_and_key_and_nothing_else(make_key):
    key, _ = await db(make_key)
    token, _ = tokens.mint("exec_abc", key)
    assert signing.loads(token, salt=tokens.SALT) == {"execution": "exec_abc", "key": key.pk}


# Kinds of grant: the stream and the fan-out work with any kind the setting lists.


@pytest.fixture
def user_header_grants(settings):
    from tests.grants import UserHeaderGrant

    settings.EXECUTIONS = {
        **settings.EXECUTIONS,
        "STREAM_GRANTS": ["executions.grants.APIKeyGrant", "tests.grants.UserHeaderGrant"],
    }
    UserHeaderGrant.valid_users, UserHeaderGrant.checks = set(), []
    return UserHeaderGrant


async def test_a_kind_of_grant_the_setting_lists_opens_streams(user, connect, user_header_grants):
    test_mode = await db(running, user, mode="test")
    stream = await connect(test_mode.execution_id, None, **{"X-Test-User": str(user.pk)})
    await stream.wait_for(lambda s: s.ids == [1])


async def test_a_kind_of_grant_the_setting_does_not_list_opens_nothing(user):
    recorder = await db(running, user)
    response = await get(recorder.execution_id, **{"X-Test-User": str(user.pk)})
    assert_error(response, 401, "invalid_api_key")


async def test_each_kind_of_grant_is_rechecked_in_one_call_for_all_its_streams(
    user, raw_key, connect, user_header_grants
):
    user_header_grants.valid_users.add(user.pk)
    recorder = await db(running, user)
    by_header = [
        await connect(recorder.execution_id, None, **{"X-Test-User": str(user.pk)})
        for _ in range(2)
    ]
    by_key = await connect(recorder.execution_id, raw_key)
    await by_key.wait_for(lambda s: s.ids == [1])
    user_header_grants.checks.clear()
    await eventually(lambda: len(user_header_grants.checks) >= 2)
    assert set(user_header_grants.checks) == {2}  # both streams, in one call a tick
    user_header_grants.valid_users.clear()
    for stream in by_header:
        await stream.end(within=10 * KEEPALIVE)
    await db(recorder.complete, {})
    await by_key.end()
    assert by_key.ids == [1, 2]
