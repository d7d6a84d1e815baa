from django.apps import AppConfig


class FlowMaestroSiteConfig(AppConfig):
    name = "flowmaestro"
    verbose_name = "FlowMaestro demo site"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
