"""The site's own error format: ``{"errors": [{"detail", "status", "source"?}]}``."""

from rest_framework.views import exception_handler as drf_exception_handler


def errors_of(data, source=None):
    if isinstance(data, dict):
        if set(data) == {"detail"}:
            return errors_of(data["detail"], source)
        return [error for field, value in data.items() for error in errors_of(value, field)]
    if isinstance(data, list):
        return [error for value in data for error in errors_of(value, source)]
    return [{"detail": str(data)} | ({"source": source} if source else {})]


def exception_handler(exc, context):
    """DRF's handler, its answers rewritten in the site's error format."""
    response = drf_exception_handler(exc, context)
    if response is not None:
        response.data = {
            "errors": [
                {**error, "status": response.status_code} for error in errors_of(response.data)
            ]
        }
    return response
