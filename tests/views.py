"""Views that exercise the apikeys app's DRF and plain-async integrations in tests."""

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


urlpatterns = [
    path("drf/scoped", ScopedDRFView.as_view()),
    path("drf/any", AnyKeyDRFView.as_view()),
    path("async/scoped", scoped_async_view),
]
