"""The createapikey and revokeapikey management commands."""

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apikeys import keys
from apikeys.models import APIKey
from apikeys.scopes import all_bundles
from tests.test_apikeys_auth import DRF_SCOPED, assert_auth_error, call, configure


def run(command, *args):
    """Run a management command; return its stdout."""
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def create(*args):
    """Run createapikey; return ``(output, raw_key, api_key)``."""
    output = run("createapikey", *args)
    raw = output.splitlines()[-1]
    return output, raw, APIKey.objects.get(key_hash=keys.digest(raw))


# createapikey


@pytest.mark.django_db
def test_createapikey_prints_the_raw_key_alone_on_the_last_line(user, client):
    output, raw, key = create(
        "--owner", "alice", "--name", "ci", "--scopes", "workflows:read,executions:read"
    )
    assert output.endswith(raw + "\n")
    assert keys.mode_of(raw) == "live"
    assert output.count(raw) == 1
    response = call(client, DRF_SCOPED, raw)
    assert response.status_code == 200
    assert response.json() == {"owner": "alice", "key": key.prefix}


@pytest.mark.django_db
def test_createapikey_summary_names_prefix_owner_mode_scopes_and_expiry(user):
    output, raw, key = create(
        "--owner", "alice", "--name", "ci", "--scopes", "workflows:read", "--mode", "test"
    )
    summary = output.removesuffix(raw + "\n")
    assert raw[keys.PREFIX_LENGTH :] not in summary
    for shown in (key.prefix, "alice", "test", "workflows:read", "never"):
        assert shown in summary


@pytest.mark.django_db
def test_createapikey_applies_scopes_in_registry_order(user):
    _, _, key = create(
        "--owner", "alice", "--name", "ci", "--scopes", " executions:read , workflows:read,"
    )
    assert key.scopes == ["workflows:read", "executions:read"]
    assert (key.owner, key.name, key.mode, key.expires_at) == (user, "ci", "live", None)


@pytest.mark.django_db
@pytest.mark.parametrize("bundle", ["read-only", "workflow-executor", "full-access"])
def test_createapikey_applies_a_bundle(user, bundle):
    _, _, key = create("--owner", "alice", "--name", "ci", "--bundle", bundle)
    assert key.scopes == all_bundles()[bundle]


@pytest.mark.django_db
def test_createapikey_applies_a_host_registered_bundle(user, settings):
    configure(
        settings,
        SCOPES={"reports:read": "Read reports"},
        BUNDLES={"reporting": ["reports:read", "executions:read"]},
    )
    _, _, key = create("--owner", "alice", "--name", "ci", "--bundle", "reporting")
    assert key.scopes == ["executions:read", "reports:read"]


@pytest.mark.django_db
def test_createapikey_creates_a_test_key_in_test_mode(user):
    _, raw, key = create(
        "--owner", "alice", "--name", "ci", "--bundle", "read-only", "--mode", "test"
    )
    assert raw.startswith("fm_test_")
    assert key.mode == APIKey.Mode.TEST


@pytest.mark.django_db
def test_createapikey_sets_the_expiry_n_days_ahead(user, client):
    before = timezone.now()
    output, raw, key = create(
        "--owner", "alice", "--name", "ci", "--bundle", "full-access", "--expires-in-days", "30"
    )
    after = timezone.now()
    assert before + timedelta(days=30) <= key.expires_at <= after + timedelta(days=30)
    assert key.expires_at.strftime("%Y-%m-%d") in output
    assert call(client, DRF_SCOPED, raw).status_code == 200


@pytest.mark.django_db
def test_createapikey_finds_the_owner_by_username_field(user, other_user):
    _, _, key = create("--owner", "bob", "--name", "ci", "--bundle", "read-only")
    assert key.owner == other_user


@pytest.mark.django_db
def test_createapikey_warns_that_an_inactive_owner_s_key_will_not_authenticate(user):
    user.is_active = False
    user.save()
    out, err = StringIO(), StringIO()
    call_command(
        "createapikey",
        "--owner",
        "alice",
        "--name",
        "ci",
        "--bundle",
        "read-only",
        stdout=out,
        stderr=err,
    )
    assert "alice is inactive" in err.getvalue()
    assert keys.mode_of(out.getvalue().splitlines()[-1]) == "live"


@pytest.mark.django_db
def test_createapikey_logs_no_raw_key(user, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    _, raw, _ = create("--owner", "alice", "--name", "ci", "--bundle", "read-only")
    assert raw[keys.PREFIX_LENGTH :] not in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "workflows:read,workflows:delete"], "Unknown scope: workflows:delete"),
        (["--scopes", " , "], "--scopes names no scope"),
        (
            ["--bundle", "admin"],
            "Unknown bundle: admin. Known: read-only, workflow-executor, full-access",
        ),
        (["--bundle", "read-only", "--bundle", "full-access"], "Give --bundle once"),
        (["--bundle", "read-only", "--expires-in-days", "0"], "must be a positive number"),
        (["--bundle", "read-only", "--expires-in-days", "-3"], "must be a positive number"),
        (["--bundle", "read-only", "--mode", "prod"], "invalid choice: 'prod'"),
        (["--scopes", "workflows:read", "--bundle", "read-only"], "not allowed with argument"),
        ([], "one of the arguments --scopes --bundle is required"),
    ],
    ids=[
        "unknown-scope",
        "empty-scopes",
        "unknown-bundle",
        "two-bundles",
        "zero-days",
        "negative-days",
        "unknown-mode",
        "scopes-and-bundle",
        "no-scopes",
    ],
)
def test_createapikey_refuses_bad_arguments_and_creates_nothing(user, args, message):
    with pytest.raises(CommandError, match=message):
        run("createapikey", "--owner", "alice", "--name", "ci", *args)
    assert not APIKey.objects.exists()


@pytest.mark.django_db
def test_createapikey_refuses_an_unknown_owner(user):
    with pytest.raises(CommandError, match="No user with username 'carol'"):
        run("createapikey", "--owner", "carol", "--name", "ci", "--bundle", "read-only")
    assert not APIKey.objects.exists()


@pytest.mark.django_db
def test_createapikey_refuses_a_name_the_model_rejects(user):
    with pytest.raises(CommandError, match="name: "):
        run("createapikey", "--owner", "alice", "--name", "x" * 101, "--bundle", "read-only")
    assert not APIKey.objects.exists()


# revokeapikey


@pytest.mark.django_db
def test_revokeapikey_revokes_the_key_with_a_display_prefix(make_key, client):
    key, raw = make_key(name="ci")
    other, other_raw = make_key(name="other")
    output = run("revokeapikey", key.prefix)
    assert "ci" in output
    assert key.prefix in output
    assert "alice" in output
    key.refresh_from_db()
    other.refresh_from_db()
    assert key.revoked_at is not None
    assert other.revoked_at is None
    assert_auth_error(call(client, DRF_SCOPED, raw), "revoked_api_key")
    assert call(client, DRF_SCOPED, other_raw).status_code == 200


@pytest.mark.django_db
def test_revokeapikey_revokes_the_key_given_in_full(make_key):
    key, raw = make_key(name="ci")
    output = run("revokeapikey", raw)
    assert key.prefix in output
    assert raw[keys.PREFIX_LENGTH :] not in output
    key.refresh_from_db()
    assert key.revoked_at is not None


@pytest.mark.django_db
def test_revokeapikey_refuses_an_ambiguous_prefix_and_asks_for_the_full_key(make_key, other_user):
    first, first_raw = make_key(name="deploy")
    second, _ = make_key(name="backup", owner=other_user)
    APIKey.objects.filter(pk=second.pk).update(prefix=first.prefix)

    with pytest.raises(CommandError) as excinfo:
        run("revokeapikey", first.prefix)
    message = str(excinfo.value)
    for shown in ("'deploy' of alice", "'backup' of bob", "full key"):
        assert shown in message
    assert not APIKey.objects.filter(revoked_at__isnull=False).exists()

    run("revokeapikey", first_raw)
    assert list(APIKey.objects.filter(revoked_at__isnull=False)) == [first]


@pytest.mark.django_db
def test_revokeapikey_ignores_revoked_keys_sharing_the_prefix(make_key):
    revoked, _ = make_key(name="old")
    revoked.revoke()
    current, _ = make_key(name="current")
    APIKey.objects.filter(pk=current.pk).update(prefix=revoked.prefix)
    run("revokeapikey", revoked.prefix)
    current.refresh_from_db()
    assert current.revoked_at is not None


@pytest.mark.django_db
def test_revokeapikey_refuses_when_nothing_matches(make_key):
    revoked, raw = make_key()
    revoked.revoke()
    for value in (revoked.prefix, raw, keys.generate("live"), "fm_live_Zz00"):
        with pytest.raises(CommandError, match="No unrevoked API key matches 'fm_"):
            run("revokeapikey", value)


@pytest.mark.django_db
def test_revokeapikey_refuses_what_is_neither_a_prefix_nor_a_key(make_key):
    key, raw = make_key()
    for value in (key.prefix[:8], raw[:20], raw + "x"):
        with pytest.raises(CommandError, match="12-character display prefix"):
            run("revokeapikey", value)
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.django_db
def test_revokeapikey_keeps_the_first_revocation_time(make_key):
    key, raw = make_key()
    run("revokeapikey", raw)
    key.refresh_from_db()
    first = key.revoked_at
    with pytest.raises(CommandError):
        run("revokeapikey", raw)
    key.refresh_from_db()
    assert key.revoked_at == first
