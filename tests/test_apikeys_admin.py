"""The Django admin for API keys: the raw key is shown once, scopes, status, revoke, rotate."""

import logging
import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from apikeys import keys
from apikeys.admin import IssuedKey
from apikeys.models import APIKey
from apikeys.scopes import all_bundles, all_scopes, expand

pytestmark = pytest.mark.django_db

RAW_KEY = re.compile(r"fm_(?:live|test)_[A-Za-z0-9]{32}")
ADD_URL = reverse("admin:apikeys_apikey_add")
CHANGELIST_URL = reverse("admin:apikeys_apikey_changelist")
# What a rotated key keeps from the key it replaces.
KEY_SETTINGS = (
    "owner_id",
    "mode",
    "scopes",
    "expires_at",
    "rate_limit_per_minute",
    "rate_limit_per_day",
)


def change_url(key):
    return reverse("admin:apikeys_apikey_change", args=[key.pk])


def add_key(client, owner, **fields):
    """POST the add form with sensible values, overridden by ``fields``."""
    data = {
        "name": "CI deploys",
        "owner": owner.pk,
        "mode": "live",
        "scopes": ["workflows:read"],
        "bundles": [],
        "expires_at_0": "",
        "expires_at_1": "",
        "rate_limit_per_minute": 60,
        "rate_limit_per_day": 10_000,
        **fields,
    }
    return client.post(ADD_URL, data)


def raw_keys_in(response):
    return RAW_KEY.findall(response.content.decode())


def shown_once(response):
    """Assert ``response`` shows one raw key under the never-again warning; return the key."""
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert "will not be shown again" in response.content.decode()
    [raw] = raw_keys_in(response)
    return raw


def run_action(client, action, selected):
    return client.post(
        CHANGELIST_URL, {"action": action, "_selected_action": [key.pk for key in selected]}
    )


def listed(client, **query):
    """Return the keys the changelist shows for ``query``."""
    response = client.get(CHANGELIST_URL, query)
    assert response.status_code == 200
    return set(response.context["cl"].result_list)


def assert_not_shown_again(client, raw, key):
    for url in (change_url(key), CHANGELIST_URL, f"{CHANGELIST_URL}?q={key.prefix}"):
        response = client.get(url)
        assert response.status_code == 200
        assert key.prefix in response.content.decode()
        assert raw not in response.content.decode()
        assert raw_keys_in(response) == []


# Creating a key: the raw key exists only in the response that created it.


def test_created_key_is_shown_once_and_never_again(admin_client, user):
    response = add_key(admin_client, user)

    raw = shown_once(response)
    assert raw.startswith("fm_live_")
    key = APIKey.objects.get()
    assert key.key_hash == keys.digest(raw)
    assert key.key_hash.startswith("sha256$")
    assert key.prefix == raw[: keys.PREFIX_LENGTH]
    assert change_url(key) in response.content.decode()
    assert_not_shown_again(admin_client, raw, key)


def test_created_key_is_in_no_session_cookie_message_or_log_entry(admin_client, user):
    response = add_key(admin_client, user)

    raw = shown_once(response)
    random_part = raw[keys.PREFIX_LENGTH :]
    assert "messages" not in response.cookies
    cookies = [*response.cookies.values(), *admin_client.cookies.values()]
    assert all(random_part not in morsel.OutputString() for morsel in cookies)
    sessions = list(Session.objects.all())
    assert sessions  # the admin's login session, which a leak would land in
    for session in sessions:
        assert random_part not in session.session_data
        assert random_part not in repr(session.get_decoded())
    [entry] = LogEntry.objects.all()
    assert entry.object_id == str(APIKey.objects.get().pk)
    assert random_part not in f"{entry.object_repr} {entry.change_message}"


def test_creating_and_rotating_keys_logs_no_raw_key(admin_client, user, settings, caplog):
    settings.DEBUG = True  # SQL and its parameters are logged at DEBUG as well
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    created = shown_once(add_key(admin_client, user))
    [rotated] = raw_keys_in(run_action(admin_client, "rotate_keys", APIKey.objects.all()))

    logged = caplog.text + "".join(repr(vars(record)) for record in caplog.records)
    assert keys.digest(created) in logged  # the INSERT's parameters were captured
    for raw in (created, rotated):
        assert raw[keys.PREFIX_LENGTH :] not in logged


def test_issued_keys_page_forbids_caching_by_itself(rf, admin_user, make_key):
    request = rf.post(CHANGELIST_URL)
    request.user = admin_user
    key, raw = make_key()
    model_admin = admin.site.get_model_admin(APIKey)

    response = model_admin.render_issued_keys(request, "API key created", [IssuedKey(key, raw)])

    assert "no-store" in response["Cache-Control"]
    assert raw in response.render().content.decode()
    assert raw not in repr(response.context_data)


def test_test_mode_key_gets_the_test_prefix(admin_client, user):
    raw = shown_once(add_key(admin_client, user, mode="test"))

    assert raw.startswith("fm_test_")
    key = APIKey.objects.get()
    assert (key.mode, key.prefix) == ("test", raw[: keys.PREFIX_LENGTH])


def test_created_key_keeps_its_expiry_and_rate_limits(admin_client, user):
    expires_at = (timezone.now() + timedelta(days=30)).replace(second=0, microsecond=0)
    response = add_key(
        admin_client,
        user,
        expires_at_0=expires_at.strftime("%Y-%m-%d"),
        expires_at_1=expires_at.strftime("%H:%M:%S"),
        rate_limit_per_minute=5,
        rate_limit_per_day=500,
    )

    shown_once(response)
    key = APIKey.objects.get()
    assert (key.expires_at, key.rate_limit_per_minute, key.rate_limit_per_day) == (
        expires_at,
        5,
        500,
    )


def test_add_form_offers_grouped_scopes_bundles_and_default_limits(admin_client, settings):
    settings.APIKEYS = {
        **settings.APIKEYS,
        "DEFAULT_RATE_LIMIT_PER_MINUTE": 7,
        "DEFAULT_RATE_LIMIT_PER_DAY": 700,
    }
    response = admin_client.get(ADD_URL)

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert [group for group, _ in form.fields["scopes"].choices] == [
        "workflows",
        "executions",
        "agents",
        "threads",
        "triggers",
        "knowledge-bases",
        "webhooks",
    ]
    page = response.content.decode()
    for name in [*all_scopes(), *all_bundles()]:
        assert f'value="{name}"' in page
    assert 'name="rate_limit_per_minute" value="7"' in page
    assert 'name="rate_limit_per_day" value="700"' in page
    assert 'name="_addanother"' not in page
    assert 'name="_continue"' not in page


def test_bundles_add_their_scopes_to_those_ticked(admin_client, user):
    response = add_key(
        admin_client, user, scopes=["agents:read"], bundles=["workflow-executor", "read-only"]
    )

    shown_once(response)
    assert APIKey.objects.get().scopes == expand(
        ["agents:read"], ["workflow-executor", "read-only"]
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"scopes": []}, "scopes", "Choose at least one scope"),
        ({"scopes": ["reports:read"]}, "scopes", "reports:read is not one of the available"),
        ({"bundles": ["admin"]}, "bundles", "admin is not one of the available"),
        ({"expires_at_0": "2000-01-01", "expires_at_1": "00:00"}, "expires_at", "future"),
    ],
    ids=["no-scope", "unknown-scope", "unknown-bundle", "already-expired"],
)
def test_invalid_key_is_a_form_error_and_creates_nothing(
    admin_client, user, fields, field, message
):
    response = add_key(admin_client, user, **fields)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field])
    assert raw_keys_in(response) == []
    assert not APIKey.objects.exists()


# The change list: status, filters, search, and the bulk actions offered.


def test_changelist_shows_each_keys_status_and_scopes(admin_client, make_key):
    make_key(name="fine", scopes=["workflows:read", "workflows:execute", "executions:read"])
    make_key(name="old", expires_at=timezone.now() - timedelta(days=1))
    make_key(name="gone", scopes=list(all_bundles()["read-only"]))[0].revoke()

    response = admin_client.get(CHANGELIST_URL)

    page = response.content.decode()
    for status in ("Active", "Expired", "Revoked"):
        assert f'<td class="field-status">{status}</td>' in page
    assert '<td class="field-scope_summary">workflows:read,execute; executions:read</td>' in page
    assert '<td class="field-scope_summary">read-only</td>' in page


def test_status_filter_selects_active_expired_and_revoked_keys(admin_client, make_key):
    active = make_key(expires_at=timezone.now() + timedelta(days=1))[0]
    never_expires = make_key()[0]
    expired = make_key(expires_at=timezone.now() - timedelta(seconds=1))[0]
    revoked = make_key()[0]
    revoked.revoke()
    revoked_and_expired = make_key(expires_at=timezone.now() - timedelta(days=1))[0]
    revoked_and_expired.revoke()

    assert listed(admin_client, status="active") == {active, never_expires}
    assert listed(admin_client, status="expired") == {expired}
    assert listed(admin_client, status="revoked") == {revoked, revoked_and_expired}
    assert len(listed(admin_client)) == 5


def test_changelist_filters_by_mode_and_owner(admin_client, make_key, other_user):
    live = make_key()[0]
    test = make_key(mode="test")[0]
    others = make_key(owner=other_user)[0]

    assert listed(admin_client, mode__exact="test") == {test}
    assert listed(admin_client, owner__id__exact=other_user.pk) == {others}
    assert listed(admin_client, mode__exact="live", owner__id__exact=live.owner_id) == {live}


def test_search_finds_a_key_by_prefix_or_name(admin_client, make_key):
    wanted = make_key(name="billing sync")[0]
    make_key(name="reports")

    assert listed(admin_client, q=wanted.prefix) == {wanted}
    assert listed(admin_client, q="billing") == {wanted}


def test_bulk_delete_is_replaced_by_revoke_and_rotate(admin_client, make_key):
    key = make_key()[0]

    page = admin_client.get(CHANGELIST_URL).content.decode()

    assert 'value="delete_selected"' not in page
    assert 'value="revoke_keys"' in page
    assert 'value="rotate_keys"' in page
    assert (
        admin_client.get(reverse("admin:apikeys_apikey_delete", args=[key.pk])).status_code == 200
    )


# Changing a key.


def test_active_key_changes_only_what_may_change(admin_client, make_key, other_user):
    key, _ = make_key(mode="live", scopes=["workflows:read"])
    page = admin_client.get(change_url(key)).content.decode()
    assert 'name="scopes"' in page
    assert 'name="bundles"' in page
    assert 'name="owner"' not in page
    assert 'name="mode"' not in page
    assert key.key_hash not in page
    assert key.key_hash.removeprefix("sha256$") not in page

    response = admin_client.post(
        change_url(key),
        {
            "name": "renamed",
            "scopes": ["agents:read"],
            "bundles": ["workflow-executor"],
            "owner": other_user.pk,
            "mode": "test",
            "prefix": "fm_test_XXXX",
            "expires_at_0": "",
            "expires_at_1": "",
            "rate_limit_per_minute": 1,
            "rate_limit_per_day": 2,
        },
    )

    assert response.status_code == 302
    changed = APIKey.objects.get(pk=key.pk)
    assert changed.name == "renamed"
    assert changed.scopes == expand(["agents:read"], ["workflow-executor"])
    assert (changed.rate_limit_per_minute, changed.rate_limit_per_day) == (1, 2)
    assert (changed.owner, changed.mode, changed.prefix, changed.key_hash) == (
        key.owner,
        key.mode,
        key.prefix,
        key.key_hash,
    )


def test_active_key_cannot_lose_every_scope(admin_client, make_key):
    key, _ = make_key(scopes=["workflows:read"])

    response = admin_client.post(
        change_url(key),
        {"name": key.name, "scopes": [], "rate_limit_per_minute": 60, "rate_limit_per_day": 10},
    )

    assert response.status_code == 200
    assert "Choose at least one scope" in " ".join(
        response.context["adminform"].form.errors["scopes"]
    )
    assert APIKey.objects.get(pk=key.pk).scopes == ["workflows:read"]


# Revoking and rotating.


def test_revoke_action_revokes_selected_keys_and_skips_revoked_ones(admin_client, make_key):
    first, second, untouched = (make_key()[0] for _ in range(3))
    already = make_key()[0]
    already.revoke()
    revoked_at = APIKey.objects.get(pk=already.pk).revoked_at

    response = run_action(admin_client, "revoke_keys", [first, second, already])

    assert response.status_code == 302
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert messages == ["Revoked 2 API keys. Skipped 1 that was already revoked."]
    assert listed(admin_client, status="revoked") == {first, second, already}
    assert APIKey.objects.get(pk=already.pk).revoked_at == revoked_at
    assert APIKey.objects.get(pk=untouched.pk).revoked_at is None
    assert LogEntry.objects.filter(change_message="Revoked.").count() == 2


def test_revoked_key_is_read_only(admin_client, make_key):
    key, _ = make_key(scopes=["workflows:read"])
    key.revoke()
    before = APIKey.objects.get(pk=key.pk)

    page = admin_client.get(change_url(key)).content.decode()
    assert "it was revoked on" in page
    for field in ("name", "scopes", "bundles", "expires_at_0", "rate_limit_per_minute"):
        assert f'name="{field}"' not in page
    assert 'name="_save"' not in page

    response = admin_client.post(
        change_url(key),
        {
            "name": "revived",
            "scopes": ["workflows:read", "workflows:execute"],
            "rate_limit_per_minute": 1,
            "rate_limit_per_day": 1,
        },
    )

    assert response.status_code == 403
    after = APIKey.objects.get(pk=key.pk)
    assert (after.name, after.scopes, after.rate_limit_per_minute, after.revoked_at) == (
        before.name,
        before.scopes,
        before.rate_limit_per_minute,
        before.revoked_at,
    )


def test_rotate_action_replaces_keys_and_shows_each_new_raw_key_once(
    admin_client, make_key, other_user
):
    live, _ = make_key(
        name="deploys",
        scopes=["workflows:read", "executions:read"],
        expires_at=timezone.now() + timedelta(days=9),
        rate_limit_per_minute=3,
        rate_limit_per_day=30,
    )
    test, _ = make_key(name="sandbox", owner=other_user, mode="test", scopes=["agents:read"])
    revoked, _ = make_key(name="retired")
    revoked.revoke()

    response = run_action(admin_client, "rotate_keys", [live, test, revoked])

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert "will not be shown again" in page
    assert f"already revoked: {revoked}" in page
    raws = raw_keys_in(response)
    assert len(raws) == len(set(raws)) == 2
    for old in (live, test):
        old.refresh_from_db()
        new = APIKey.objects.get(name=old.name, revoked_at__isnull=True)
        [raw] = [raw for raw in raws if keys.digest(raw) == new.key_hash]
        assert old.status == APIKey.Status.REVOKED
        assert raw.startswith(keys.MODE_PREFIXES[old.mode])
        assert [getattr(new, f) for f in KEY_SETTINGS] == [getattr(old, f) for f in KEY_SETTINGS]
        assert f"{old.prefix}…" in page
        assert_not_shown_again(admin_client, raw, new)
    assert APIKey.objects.count() == 5


def test_rotating_only_revoked_keys_issues_nothing(admin_client, make_key):
    revoked, _ = make_key()
    revoked.revoke()

    response = run_action(admin_client, "rotate_keys", [revoked])

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "No key was rotated: revoked keys cannot be rotated."
    ]
    assert list(APIKey.objects.all()) == [revoked]


# Every admin page of the app renders.


def test_every_api_key_admin_page_renders(admin_client, make_key):
    active, _ = make_key()
    revoked, _ = make_key()
    revoked.revoke()
    urls = [
        reverse("admin:index"),
        reverse("admin:app_list", args=["apikeys"]),
        ADD_URL,
        CHANGELIST_URL,
        f"{CHANGELIST_URL}?status=expired&mode__exact=live&q=fm_&_facets=True",
        change_url(active),
        change_url(revoked),
        reverse("admin:apikeys_apikey_history", args=[active.pk]),
        reverse("admin:apikeys_apikey_delete", args=[revoked.pk]),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "API key" in response.content.decode(), url
