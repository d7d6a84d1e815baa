"""Django REST framework permission: the request's API key holds the view's scopes."""

from django.core.exceptions import ImproperlyConfigured
from rest_framework.permissions import BasePermission

from .auth import check_scopes
from .exceptions import InvalidAPIKey
from .models import APIKey


class HasScopes(BasePermission):
    """Allow the request only if its API key holds every scope in ``view.required_scopes``
    (``()`` for any key)."""

    def has_permission(self, request, view):
        try:
            required = view.required_scopes
        except AttributeError:
            raise ImproperlyConfigured(
                f"{type(view).__name__} must declare required_scopes (use () for any key)."
            ) from None
        if not isinstance(request.auth, APIKey):
            raise InvalidAPIKey
        check_scopes(request.auth, required)
        return True
