"""Views that exercise the apikeys app's DRF and plain-async integrations in tests."""

import threading

from asgiref.sync import SyncToAsync
from django.http import JsonResponse
from django.urls import path
from rest_framework.response import Response

from apikeys.auth import scopes_required
from apikeys.views import ScopedAPIView


class ScopedDRFView(ScopedAPIView):
    required_scopes = ("workflows:read", "executions:read")

    def get(self, request):
        return Response({"owner": request.user.username, "key": request.auth.prefix})


class AnyKeyDRFView(ScopedAPIView):
    required_scopes = ()

    def get(self, request):
        return Response({"owner": request.user.username})


@scopes_required("executions:read")
async def scoped_async_view(request):
    return JsonResponse({"owner_id": request.api_key.owner_id})


async def thread_context_view(request):
    """Say whether the request runs in Django's per-request thread-sensitive context."""
    in_context = SyncToAsync.thread_sensitive_context.get(None) is not None
    return JsonResponse({"thread_sensitive_context": in_context})


class Gate:
    """Hold ``gated_view`` until a test opens the gate."""

    entered = threading.Event()
    opened = threading.Event()


def gated_view(request):
    Gate.entered.set()
    Gate.opened.wait(timeout=10)
    return JsonResponse({"gated": True})


async def alternate_view(request):
    return JsonResponse({"urlconf": "alternate"})


class AlternateURLconfMiddleware:
    """Serve a request that asks for it with ``tests.views.alternate_urlpatterns``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.headers.get("X-Alternate-URLconf"):
            request.urlconf = "tests.alternate_urls"
        return self.get_response(request)


urlpatterns = [
    path("drf/scoped", ScopedDRFView.as_view()),
    path("drf/any", AnyKeyDRFView.as_view()),
    path("async/scoped", scoped_async_view),
    path("async/context", thread_context_view),
    path("gated", gated_view),
]
