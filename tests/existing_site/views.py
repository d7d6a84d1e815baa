from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import JsonResponse
from rest_framework import generics, serializers


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = get_user_model()
        fields = ["id", "username"]


class UserList(generics.ListAPIView):
    """The site's users, by username."""

    queryset = get_user_model().objects.order_by("username")
    serializer_class = UserSerializer


@transaction.non_atomic_requests  # ATOMIC_REQUESTS does not apply to async views
async def status(request):
    """A plain async Django view: the site is up and has this many users."""
    return JsonResponse({"status": "ok", "users": await get_user_model().objects.acount()})
