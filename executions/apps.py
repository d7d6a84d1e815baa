from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Workflow executions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core.signals import setting_changed

        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import app_settings

        setting_changed.connect(
            app_settings.setting_changed, dispatch_uid="executions.clear_config_cache"
        )
