import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.existing_site.settings")

from executions.asgi import get_asgi_application

application = get_asgi_application()
