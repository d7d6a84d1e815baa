"""System checks for the executions app."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import app_settings, get_config
from .retention import configured_retention, is_valid_retention

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


def configured_layer():
    return getattr(settings, "CHANNEL_LAYERS", {}).get(get_config()["CHANNEL_LAYER"])


@register()
def check_settings_keys(app_configs, **kwargs):
    return app_settings.check_keys("executions.E002")


@register()
def check_retention(app_configs, **kwargs):
    if is_valid_retention(configured_retention()):
        return []
    return [
        Error(
            f"EXECUTIONS['RETENTION'] is {configured_retention()!r}: it must be a positive "
            "datetime.timedelta, or None to keep finished executions until deleted.",
            hint="For example EXECUTIONS = {'RETENTION': timedelta(days=30)}.",
            id="executions.E003",
        )
    ]


@register(Tags.compatibility)
def check_channel_layer(app_configs, **kwargs):
    if configured_layer() is not None:
        return []
    return [
        Error(
            f"CHANNEL_LAYERS has no {get_config()['CHANNEL_LAYER']!r} layer: streams hear of "
            "new events only by polling the database.",
            hint="Configure channels_redis.pubsub.RedisPubSubChannelLayer (or set "
            "EXECUTIONS['CHANNEL_LAYER'] to an alias that exists).",
            id="executions.E001",
        )
    ]


@register(Tags.compatibility, deploy=True)
def check_in_memory_layer(app_configs, **kwargs):
    layer = configured_layer()
    if layer is None or layer.get("BACKEND") != IN_MEMORY_LAYER or settings.DEBUG:
        return []
    return [
        Warning(
            "The in-memory channel layer is used while DEBUG is off: events recorded in "
            "another process reach streams only by polling the database.",
            hint="Use channels_redis.pubsub.RedisPubSubChannelLayer in production.",
            id="executions.W001",
        )
    ]


@register(Tags.database)
def check_sqlite_transaction_mode(app_configs, **kwargs):
    database = settings.DATABASES.get("default", {})
    if database.get("ENGINE") != "django.db.backends.sqlite3":
        return []
    if database.get("OPTIONS", {}).get("transaction_mode") == "IMMEDIATE":
        return []
    return [
        Warning(
            "SQLite without transaction_mode IMMEDIATE: two processes recording events for "
            "one execution can fail with 'database is locked'.",
            hint="Set DATABASES['default']['OPTIONS']['transaction_mode'] = 'IMMEDIATE'.",
            id="executions.W002",
        )
    ]


IMMEDIATE_BACKENDS = {
    "django.tasks.backends.immediate.ImmediateBackend",
    "django_tasks.backends.immediate.ImmediateBackend",
}


@register(Tags.compatibility)
def check_task_backend(app_configs, **kwargs):
    backend = getattr(settings, "TASKS", {}).get("default", {}).get("BACKEND")
    if backend is not None and backend not in IMMEDIATE_BACKENDS:
        return []
    return [
        Warning(
            "Workflows are queued on Django's immediate task backend: POST .../execute runs "
            "the whole workflow inside the request instead of answering 202 at once.",
            hint="Set TASKS = {'default': {'BACKEND': 'django_tasks_db.DatabaseBackend'}} (or "
            "another real backend) and run its worker, e.g. `manage.py db_worker`.",
            id="executions.W003",
        )
    ]
