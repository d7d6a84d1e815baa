from django.apps import AppConfig


class ExistingSiteConfig(AppConfig):
    name = "tests.existing_site"
    label = "existing_site"
    verbose_name = "Acme's existing site"
