import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmaestro.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from executions.asgi import get_asgi_application

application = get_asgi_application()
if settings.DEBUG:
    # As runserver does: serve the admin's and the API docs' assets in development.
    application = ASGIStaticFilesHandler(application)
