from django.apps import AppConfig


class APIKeysConfig(AppConfig):
    name = "apikeys"
    verbose_name = "API keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core.signals import setting_changed

        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import app_settings
        from .scopes import clear_registry_cache

        app_settings.on_change(clear_registry_cache)
        setting_changed.connect(
            app_settings.setting_changed, dispatch_uid="apikeys.clear_config_cache"
        )
