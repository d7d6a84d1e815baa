"""The API's errors: each carries the contract's HTTP status, code, message and details."""

from rest_framework import status
from rest_framework.exceptions import APIException

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
