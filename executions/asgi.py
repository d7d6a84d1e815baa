"""An ASGI application for sites that serve event streams."""

import django
from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.urls import Resolver404, get_resolver


class StreamingASGIHandler(ASGIHandler):
    """Django's ASGI handler, except that a request to an async view holds no thread.

    Django runs each request in its own thread-sensitive context, and the sync signal
    receivers and middleware hooks of even an async view start a thread in it that lives
    as long as the response: one OS thread per open event stream. Requests to async views
    skip that context, so their brief sync hooks share asgiref's one sync thread.
    """

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.is_async_view(scope):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    @staticmethod
    def is_async_view(scope):
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return False
        return iscoroutinefunction(match.func)


def get_asgi_application():
    """``django.core.asgi.get_asgi_application()``, serving event streams thread-free."""
    django.setup(set_prefix=False)
    return StreamingASGIHandler()
