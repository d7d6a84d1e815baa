"""The contract's JSON envelopes and the request id every response carries."""

import json
import uuid
from datetime import UTC

from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse
from django.utils import timezone

REQUEST_ID_HEADER = "X-Request-ID"


def request_id(request):
    """Return the request's id, assigning one on first use."""
    rid = getattr(request, "request_id", None)
    if rid is None:
        rid = request.request_id = str(uuid.uuid4())
    return rid


def format_timestamp(value):
    """Return ``value`` as UTC ISO 8601 with milliseconds and ``Z``; None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def meta(request):
    return {"request_id": request_id(request), "timestamp": format_timestamp(timezone.now())}


def success_body(request, data, pagination=None):
    body = {"data": data, "meta": meta(request)}
    if pagination is not None:
        body["pagination"] = pagination
    return body


def error_body(request, error):
    body = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return {"error": body, "meta": meta(request)}


def json_bytes(data):
    """Encode ``data`` as compact JSON, as DRF's renderer does."""
    return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


def error_response(request, error):
    """Return a plain Django response for an ``APIError``, for views outside DRF."""
    response = HttpResponse(
        json_bytes(error_body(request, error)),
        status=error.status_code,
        content_type="application/json",
    )
    for name, value in error.headers.items():
        response[name] = value
    return response
