"""System checks that turn misconfiguration into a message with an id and a hint."""

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from apikeys import checks as apikeys_checks
from apikeys.middleware import APIMiddleware
from executions import checks as executions_checks
from flowmaestro import checks as site_checks
from flowmaestro.settings import DEVELOPMENT_SECRET_KEY
from tests.test_apikeys_auth import configure

IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REDIS_LAYER = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": ["redis://127.0.0.1:6379/3"]},
    }
}


def ids(messages):
    for message in messages:
        assert message.hint, f"{message.id} gives no hint"
    return [message.id for message in messages]


# apikeys.W001: test keys accepted in production without anyone deciding it.


def test_test_keys_accepted_with_debug_off_by_default_warn(settings):
    settings.DEBUG = False
    settings.APIKEYS = {k: v for k, v in settings.APIKEYS.items() if k != "ACCEPT_TEST_KEYS"}
    assert ids(apikeys_checks.check_test_keys_in_production(None)) == ["apikeys.W001"]


@pytest.mark.parametrize("accept", [True, False])
def test_explicit_test_keys_decision_silences_the_warning(settings, accept):
    settings.DEBUG = False
    configure(settings, ACCEPT_TEST_KEYS=accept)
    assert apikeys_checks.check_test_keys_in_production(None) == []


def test_test_keys_accepted_with_debug_on_do_not_warn(settings):
    settings.DEBUG = True
    assert apikeys_checks.check_test_keys_in_production(None) == []


# apikeys.W002: the middleware that adds X-Request-ID and X-RateLimit-*.


def test_missing_api_middleware_warns(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != apikeys_checks.MIDDLEWARE_PATH]
    assert ids(apikeys_checks.check_middleware(None)) == ["apikeys.W002"]


def test_installed_api_middleware_does_not_warn():
    assert apikeys_checks.check_middleware(None) == []


class SiteAPIMiddleware(APIMiddleware):
    """A host's own subclass of the middleware."""


def test_a_subclass_of_the_api_middleware_does_not_warn(settings):
    settings.MIDDLEWARE = [
        f"{__name__}.SiteAPIMiddleware" if m == apikeys_checks.MIDDLEWARE_PATH else m
        for m in settings.MIDDLEWARE
    ]
    assert apikeys_checks.check_middleware(None) == []


# apikeys.E003 / executions.E002: a key the settings dict does not know.


@pytest.mark.parametrize(
    ("setting", "typo", "meant", "check", "check_id"),
    [
        ("EXECUTIONS", "KEEPALIVE", "KEEPALIVE_INTERVAL", executions_checks, "executions.E002"),
        ("EXECUTIONS", "BATCH_INTERVALS", "BATCH_INTERVAL", executions_checks, "executions.E002"),
        ("APIKEYS", "RATE_LIMIT_REDIS", "RATE_LIMIT_REDIS_URL", apikeys_checks, "apikeys.E003"),
        ("APIKEYS", "ACEPT_TEST_KEYS", "ACCEPT_TEST_KEYS", apikeys_checks, "apikeys.E003"),
    ],
)
def test_an_unknown_key_is_an_error_whose_hint_names_the_closest_valid_key(
    settings, setting, typo, meant, check, check_id
):
    setattr(settings, setting, {**getattr(settings, setting), typo: 1})
    [error] = check.check_settings_keys(None)
    assert error.id == check_id
    assert repr(typo) in error.msg
    assert error.hint.startswith(f"Did you mean {meant!r}?")


def test_a_settings_value_that_is_not_a_dict_is_an_error(settings):
    settings.EXECUTIONS = [("KEEPALIVE_INTERVAL", 4)]
    assert ids(executions_checks.check_settings_keys(None)) == ["executions.E002"]


def test_known_keys_pass_the_settings_check():
    assert apikeys_checks.check_settings_keys(None) == []
    assert executions_checks.check_settings_keys(None) == []


def test_no_check_of_the_apps_speaks_of_the_demo_site(settings):
    settings.DEBUG = False
    settings.APIKEYS = {"UNKNOWN": 1}
    settings.EXECUTIONS = {"UNKNOWN": 1}
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    settings.MIDDLEWARE = []
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    messages = [
        message
        for message in run_checks(include_deployment_checks=True)
        if message.id.startswith(("apikeys.", "executions."))
    ]
    assert len(messages) >= 6
    for message in messages:
        assert "demo" not in f"{message.msg} {message.hint}".lower(), message.id


# apikeys.E001 / E002: the host's scope and bundle registry.


@pytest.mark.parametrize("scope", ["reports", "reports:", ":read", "reports: read"])
def test_malformed_registered_scope_is_an_error(settings, scope):
    configure(settings, SCOPES={scope: "Broken", "reports:read": "Read reports"})
    messages = apikeys_checks.check_registry(None)
    assert ids(messages) == ["apikeys.E001"]
    assert repr(scope) in messages[0].msg


def test_bundle_naming_an_unknown_scope_is_an_error(settings):
    configure(
        settings,
        SCOPES={"reports:read": "Read reports"},
        BUNDLES={"reporting": ["reports:read", "reports:export", "executions:read"]},
    )
    messages = apikeys_checks.check_registry(None)
    assert ids(messages) == ["apikeys.E002"]
    assert "'reporting'" in messages[0].msg
    assert "reports:export" in messages[0].msg


def test_well_formed_registry_passes(settings):
    configure(
        settings,
        SCOPES={"reports:read": "Read reports"},
        BUNDLES={"reporting": ["reports:read", "executions:read"]},
    )
    assert apikeys_checks.check_registry(None) == []


# flowmaestro.E001: the development SECRET_KEY in production.


def test_development_secret_key_with_debug_off_is_an_error(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = DEVELOPMENT_SECRET_KEY
    assert ids(site_checks.check_secret_key(None)) == ["flowmaestro.E001"]


@pytest.mark.parametrize(
    ("debug", "secret_key"),
    [(True, DEVELOPMENT_SECRET_KEY), (False, "a-real-secret-" + "x" * 40)],
    ids=["debug-on", "real-key"],
)
def test_secret_key_check_passes_otherwise(settings, debug, secret_key):
    settings.DEBUG = debug
    settings.SECRET_KEY = secret_key
    assert site_checks.check_secret_key(None) == []


# executions.W001 / E001: the channel layer that carries live events between processes.


def test_in_memory_channel_layer_with_debug_off_warns(settings):
    settings.DEBUG = False
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    assert ids(executions_checks.check_in_memory_layer(None)) == ["executions.W001"]


@pytest.mark.parametrize(
    ("debug", "layers"),
    [(True, IN_MEMORY_LAYER), (False, REDIS_LAYER)],
    ids=["debug-on", "redis-layer"],
)
def test_channel_layer_checks_pass_otherwise(settings, debug, layers):
    settings.DEBUG = debug
    settings.CHANNEL_LAYERS = layers
    assert executions_checks.check_channel_layer(None) == []
    assert executions_checks.check_in_memory_layer(None) == []


def test_missing_channel_layer_is_an_error(settings):
    settings.CHANNEL_LAYERS = {}
    assert ids(executions_checks.check_channel_layer(None)) == ["executions.E001"]
    assert executions_checks.check_in_memory_layer(None) == []


# executions.W002: SQLite without IMMEDIATE transactions.


def sqlite_databases(**options):
    return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", **options}}


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        (sqlite_databases(), ["executions.W002"]),
        (sqlite_databases(OPTIONS={"transaction_mode": "DEFERRED"}), ["executions.W002"]),
        (sqlite_databases(OPTIONS={"transaction_mode": "IMMEDIATE"}), []),
        ({"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}, []),
    ],
    ids=["sqlite-default", "sqlite-deferred", "sqlite-immediate", "postgresql"],
)
def test_sqlite_without_immediate_transactions_warns(databases, expected):
    # The check reads only the setting; no connection is made with these databases.
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES=databases),
    ):
        assert ids(executions_checks.check_sqlite_transaction_mode(None)) == expected


# All of them through the registry, as `manage.py check --deploy` runs them.

MISCONFIGURATION_IDS = {
    "apikeys.W001",
    "apikeys.W002",
    "apikeys.E001",
    "apikeys.E002",
    "flowmaestro.E001",
    "executions.W001",
}


def test_deployment_checks_report_a_misconfigured_production_site(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = DEVELOPMENT_SECRET_KEY
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != apikeys_checks.MIDDLEWARE_PATH]
    settings.APIKEYS = {k: v for k, v in settings.APIKEYS.items() if k != "ACCEPT_TEST_KEYS"}
    configure(settings, SCOPES={"reports": "Broken"}, BUNDLES={"x": ["nope:read"]})
    found = {message.id for message in run_checks(include_deployment_checks=True)}
    assert found >= MISCONFIGURATION_IDS


def test_deployment_checks_are_quiet_about_a_configured_site(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "a-real-secret-" + "x" * 40
    settings.CHANNEL_LAYERS = REDIS_LAYER
    configure(settings, ACCEPT_TEST_KEYS=False)
    found = {message.id for message in run_checks(include_deployment_checks=True)}
    assert not found & MISCONFIGURATION_IDS


# executions.E003: a retention pruneexecutions cannot use.


@pytest.mark.parametrize("retention", [30, "30d", timedelta(0), timedelta(days=-1)])
def test_a_retention_that_is_not_a_positive_timedelta_is_an_error(settings, retention):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "RETENTION": retention}
    assert ids(executions_checks.check_retention(None)) == ["executions.E003"]


@pytest.mark.parametrize("retention", [None, timedelta(days=30)])
def test_no_retention_or_a_positive_one_passes(settings, retention):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "RETENTION": retention}
    assert executions_checks.check_retention(None) == []
