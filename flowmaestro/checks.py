from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def check_secret_key(app_configs, **kwargs):
    from .settings import DEVELOPMENT_SECRET_KEY

    if settings.DEBUG or settings.SECRET_KEY != DEVELOPMENT_SECRET_KEY:
        return []
    return [
        Error(
            "DEBUG is off but SECRET_KEY is still the development default.",
            hint="Set the SECRET_KEY environment variable to a long random value, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'.",
            id="flowmaestro.E001",
        )
    ]
