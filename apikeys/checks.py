"""System checks for the apikeys app."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import app_settings, get_config
from .middleware import APIMiddleware
from .scopes import all_scopes

MIDDLEWARE_PATH = "apikeys.middleware.APIMiddleware"
SCOPE_NAME_HINT = "Scope names look like 'resource:action', for example 'reports:read'."


@register(Tags.security, deploy=True)
def check_test_keys_in_production(app_configs, **kwargs):
    explicit = "ACCEPT_TEST_KEYS" in getattr(settings, "APIKEYS", {})
    if settings.DEBUG or explicit or not get_config()["ACCEPT_TEST_KEYS"]:
        return []
    return [
        Warning(
            "fm_test_ keys are accepted while DEBUG is off, and no one decided that.",
            hint="Set APIKEYS['ACCEPT_TEST_KEYS'] to True to serve test-mode traffic on this "
            "deployment, or to False to refuse test keys.",
            id="apikeys.W001",
        )
    ]


@register()
def check_settings_keys(app_configs, **kwargs):
    return app_settings.check_keys("apikeys.E003")


def is_api_middleware(path):
    try:
        middleware = import_string(path)
    except ImportError:
        return False  # Django's own start-up reports it
    return isinstance(middleware, type) and issubclass(middleware, APIMiddleware)


@register()
def check_middleware(app_configs, **kwargs):
    if any(is_api_middleware(path) for path in settings.MIDDLEWARE):
        return []
    return [
        Warning(
            "API responses will lack X-Request-ID and X-RateLimit-* headers.",
            hint=f"Add '{MIDDLEWARE_PATH}' to MIDDLEWARE.",
            id="apikeys.W002",
        )
    ]


@register()
def check_registry(app_configs, **kwargs):
    errors = []
    config = get_config()
    for scope in config["SCOPES"]:
        resource, _, action = scope.partition(":")
        if not resource or not action or " " in scope:
            errors.append(
                Error(
                    f"APIKEYS['SCOPES'] has a malformed scope {scope!r}.",
                    hint=SCOPE_NAME_HINT,
                    id="apikeys.E001",
                )
            )
    known = all_scopes()
    for bundle, members in config["BUNDLES"].items():
        unknown = sorted(set(members) - set(known))
        if unknown:
            errors.append(
                Error(
                    f"APIKEYS['BUNDLES'][{bundle!r}] names unknown scopes: {', '.join(unknown)}.",
                    hint="Register them in APIKEYS['SCOPES'] or remove them from the bundle.",
                    id="apikeys.E002",
                )
            )
    return errors
