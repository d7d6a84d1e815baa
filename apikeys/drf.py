"""Django REST framework integration: authentication, scope permission, error envelopes."""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from . import exceptions
from .auth import authenticate, check_scopes
from .responses import error_body

logger = logging.getLogger(__name__)


class APIKeyAuthentication(BaseAuthentication):
    """``request.user`` is the key's owner and ``request.auth`` the ``APIKey``."""

    def authenticate(self, request):
        key = authenticate(request._request)
        return key.owner, key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class HasScopes(BasePermission):
    """Allow the request only if its key holds every scope in ``view.required_scopes``."""

    def has_permission(self, request, view):
        try:
            required = view.required_scopes
        except AttributeError:
            raise ImproperlyConfigured(
                f"{type(view).__name__} must declare required_scopes (use () for any key)."
            ) from None
        if request.auth is None:
            raise exceptions.InvalidAPIKey
        check_scopes(request.auth, required)
        return True


def as_api_error(exc):
    """Return the ``APIError`` the contract answers for ``exc``, or None for a crash."""
    if isinstance(exc, exceptions.APIError):
        return exc
    if isinstance(exc, Http404):
        return exceptions.ResourceNotFound()
    if isinstance(exc, drf_exceptions.ValidationError):
        return exceptions.ValidationError("The request is not valid.", details=exc.detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return exceptions.ValidationError(
            "The request body is not valid JSON.", details={"body": str(exc.detail)}
        )
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return exceptions.ValidationError(
            "The request body must be JSON (Content-Type: application/json).",
            details={"body": str(exc.detail)},
        )
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return exceptions.InvalidAPIKey
    if isinstance(exc, drf_exceptions.Throttled):
        return exceptions.RateLimitExceeded()
    if isinstance(exc, DjangoPermissionDenied | drf_exceptions.PermissionDenied):
        return exceptions.InsufficientScope()
    if isinstance(exc, drf_exceptions.APIException):
        error = exceptions.APIError(str(exc.detail))
        error.status_code, error.code = exc.status_code, exc.default_code
        return error
    return None


def exception_handler(exc, context):
    """DRF's ``EXCEPTION_HANDLER``: every error, even an unexpected one, in the envelope."""
    request = context["request"]
    error = as_api_error(exc)
    if error is None:
        logger.exception("Unhandled error in %s", context.get("view"), exc_info=exc)
        error = exceptions.InternalError()
    if isinstance(error, type):
        error = error()
    response = Response(error_body(request._request, error), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response
