"""The API's errors: each carries the contract's HTTP status, code, message and details;
and the DRF exception handler that answers every error, even a crash, in the envelope."""

import logging
from functools import wraps

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from .metrics import count_refusal
from .responses import error_body, error_response

logger = logging.getLogger(__name__)

# A lost or refused database connection: the contract's 503, not a crash's 500.
DatabaseUnavailable = (OperationalError, InterfaceError)

WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="api"'}


class APIError(APIException):
    """An error answered with the contract's envelope."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "validation_error"
    default_detail = "The request is not valid."

    default_headers = {}

    def __init__(self, message=None, details=None, headers=None):
        super().__init__(message or self.default_detail, self.default_code)
        self.code = self.default_code
        self.message = str(self.detail)
        self.details = details
        self.headers = {**self.default_headers, **(headers or {})}
        # What DRF's own exception handler turns into WWW-Authenticate and Retry-After, so
        # a host view that authenticates with our classes keeps those headers.
        self.auth_header = self.headers.get("WWW-Authenticate")
        retry_after = self.headers.get("Retry-After")
        self.wait = None if retry_after is None else int(retry_after)


class ValidationError(APIError):
    pass


class InvalidAPIKey(APIError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_headers = WWW_AUTHENTICATE
    default_code = "invalid_api_key"
    default_detail = "A valid API key is required."


class ExpiredAPIKey(APIError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_headers = WWW_AUTHENTICATE
    default_code = "expired_api_key"
    default_detail = "This API key has expired."


class RevokedAPIKey(APIError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_headers = WWW_AUTHENTICATE
    default_code = "revoked_api_key"
    default_detail = "This API key has been revoked."


class InsufficientScope(APIError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "insufficient_scope"
    default_detail = "This API key lacks a scope this endpoint requires."


class ResourceNotFound(APIError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "resource_not_found"
    default_detail = "The resource was not found."

    def __init__(self, resource=None, resource_id=None):
        if resource is None:
            super().__init__()
        else:
            super().__init__(
                f"{resource.capitalize()} '{resource_id}' was not found.",
                details={"resource": resource, "id": str(resource_id)},
            )


class MethodNotAllowed(APIError):
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    default_code = "method_not_allowed"
    default_detail = "This endpoint does not allow this method."


class PayloadTooLarge(APIError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "validation_error"
    default_detail = "The request body is too large."


class RateLimitExceeded(APIError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "rate_limit_exceeded"
    default_detail = "Rate limit exceeded."


class ServiceUnavailable(APIError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "service_unavailable"
    default_detail = "A backing service is unavailable. Retry shortly."


class InternalError(APIError):
    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_code = "internal_error"
    default_detail = "An internal error occurred."


AUTHENTICATION_ERRORS = (InvalidAPIKey, ExpiredAPIKey, RevokedAPIKey)


def as_api_error(exc):
    """Return the ``APIError`` the contract answers for ``exc``, or None for a crash."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, Http404):
        return ResourceNotFound()
    if isinstance(exc, DatabaseUnavailable):
        logger.error("The database is unavailable: %r", exc)
        return ServiceUnavailable("The database is unavailable. Retry shortly.")
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(details={"limit_bytes": settings.DATA_UPLOAD_MAX_MEMORY_SIZE})
    if isinstance(exc, drf_exceptions.ValidationError):
        return ValidationError("The request is not valid.", details=exc.detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return ValidationError(
            "The request body is not valid JSON.", details={"body": str(exc.detail)}
        )
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return ValidationError(
            "The request body must be JSON (Content-Type: application/json).",
            details={"body": str(exc.detail)},
        )
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        return InvalidAPIKey()
    if isinstance(exc, drf_exceptions.Throttled):
        return RateLimitExceeded()
    if isinstance(exc, DjangoPermissionDenied | drf_exceptions.PermissionDenied):
        return InsufficientScope()
    if isinstance(exc, drf_exceptions.APIException):
        error = APIError(str(exc.detail))
        error.status_code, error.code = exc.status_code, exc.default_code
        return error
    return None


def exception_handler(exc, context):
    """A DRF exception handler: every error, even an unexpected one, in the envelope."""
    request = context["request"]
    error = as_api_error(exc)
    if error is None:
        logger.exception("Unhandled error in %s", context.get("view"), exc_info=exc)
        error = InternalError()
    count_refusal(error)
    response = Response(error_body(request._request, error), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response


def answers_api_errors(view):
    """Decorate a view outside DRF, sync or async: an ``APIError`` it raises is answered
    in the envelope, and so is a crash, as ``internal_error`` (logged, never in the body)."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request, *args, **kwargs):
            try:
                return await view(request, *args, **kwargs)
            except Exception as exc:
                return answer_for(request, exc, view)

        return async_wrapper

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except Exception as exc:
            return answer_for(request, exc, view)

    return wrapper


def answer_for(request, exc, view):
    """The envelope that answers ``exc``, raised by ``view`` (``@answers_api_errors``)."""
    if isinstance(exc, APIError):
        count_refusal(exc)
        return error_response(request, exc)
    if isinstance(exc, DatabaseUnavailable):
        return error_response(request, as_api_error(exc))
    logger.exception("Unhandled error in %s", view.__qualname__, exc_info=exc)
    return error_response(request, InternalError())
