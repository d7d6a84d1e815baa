"""The executions API's OpenAPI schema: its own generator settings and views, whatever the
host's ``SPECTACULAR_SETTINGS``; envelopes, error responses, and the event stream.

The schema is generated with ``SCHEMA_SETTINGS`` alone, from the endpoints of this app's
views wherever the host mounts them:

    python manage.py spectacular --custom-settings executions.schema.SCHEMA_SETTINGS
"""

import importlib.util
from functools import cache

from django.urls import get_script_prefix, reverse
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import SPECTACULAR_DEFAULTS, patched_settings
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    inline_serializer,
)
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from apikeys.openapi import SECURITY_SCHEMES
from apikeys.views import ScopedAPIView

from .events import EVENT_TYPES

TITLE = "FlowMaestro-compatible executions API"
# drf-spectacular's defaults but for what this schema sets; SERVE_* and the generator
# class cannot be patched, and are given to the views instead.
SCHEMA_SETTINGS = {
    **{
        name: value
        for name, value in SPECTACULAR_DEFAULTS.items()
        if not name.startswith("SERVE_") and name != "DEFAULT_GENERATOR_CLASS"
    },
    "TITLE": TITLE,
    "DESCRIPTION": "Start workflows, follow their executions live over server-sent events, "
    "and cancel them. Every request carries an API key (`X-API-Key` or "
    "`Authorization: Bearer`).",
    "VERSION": "1.0.0",
    "PREPROCESSING_HOOKS": ["executions.schema.executions_endpoints_only"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "executions.schema.add_event_stream",
    ],
}
if importlib.util.find_spec("drf_spectacular_sidecar") is not None:
    # Swagger UI's assets from the site's own static files, not from a CDN.
    SCHEMA_SETTINGS |= {
        "SWAGGER_UI_DIST": "SIDECAR",
        "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        "REDOC_DIST": "SIDECAR",
    }

EVENT_FIELDS = {
    "connected": "status (sent first on every connection; no id)",
    "execution:started": "workflow_id, started_at",
    "execution:progress": "progress (0-100), current_node, completed_nodes, total_nodes",
    "node:started": "node_id, node_type, started_at",
    "node:completed": "node_id, node_type, outputs, duration_ms, completed_at",
    "node:failed": "node_id, node_type, error, duration_ms, failed_at",
    "execution:completed": "status, outputs, duration_ms, completed_at",
    "execution:failed": "status, error, node_id, completed_at",
    "execution:cancelled": "status, cancelled_at",
}

PAGE_PARAMETERS = [
    OpenApiParameter("page", {"type": "integer", "minimum": 1}, description="Page number, from 1."),
    OpenApiParameter(
        "per_page",
        {"type": "integer", "minimum": 1},
        description="Items per page: default 20; more than 100 gives 100.",
    ),
]

Meta = inline_serializer(
    "Meta", {"request_id": serializers.UUIDField(), "timestamp": serializers.CharField()}
)
Pagination = inline_serializer(
    "Pagination",
    {
        name: serializers.IntegerField() if kind is int else serializers.BooleanField()
        for name, kind in [
            ("page", int),
            ("per_page", int),
            ("total_count", int),
            ("total_pages", int),
            ("has_next", bool),
            ("has_prev", bool),
            ("has_more", bool),
        ]
    },
)
ErrorEnvelope = inline_serializer(
    "ErrorEnvelope",
    {
        "error": inline_serializer(
            "Error",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.DictField(required=False),
            },
        ),
        "meta": Meta,
    },
)

ERROR_RESPONSES = {
    400: "validation_error",
    401: "invalid_api_key, expired_api_key or revoked_api_key",
    403: "insufficient_scope (details: required_scopes, missing_scopes, your_scopes)",
    404: "resource_not_found (details: resource, id)",
    429: "rate_limit_exceeded (details: limit, window, retry_after; header Retry-After)",
    503: "service_unavailable",
}


def error_responses():
    return {
        code: OpenApiResponse(ErrorEnvelope, description=description)
        for code, description in ERROR_RESPONSES.items()
    }


@cache
def envelope_body(serializer_class, many):
    name = serializer_class.__name__.removesuffix("Serializer")
    fields = {"data": serializer_class(many=many), "meta": Meta}
    if many:
        fields["pagination"] = Pagination
    return inline_serializer(f"{name}{'List' if many else ''}Envelope", fields)


def envelope(serializer_class, many=False, status_code=200):
    """Return drf-spectacular ``responses`` for a ``{"data", "meta"}`` envelope."""
    return {status_code: envelope_body(serializer_class, many), **error_responses()}


def stream_operation(error_schema):
    description = (
        "Server-sent events (WHATWG format) of one execution: `retry:`, then `connected`, the "
        "whole history after `Last-Event-ID`, then live events; `: keepalive` comments during "
        "silence; the response ends after a terminal event. Every `data:` is one line of JSON "
        "with `type` and `execution_id`. Event types and their fields:\n\n"
        + "\n".join(f"- `{event}`: {EVENT_FIELDS[event]}" for event in EVENT_TYPES)
        + "\n\nRequired scopes: `executions:read`. Besides an API key, the stream accepts "
        "`?token=` (a stream token from `POST .../stream-token`) and, with no key or token, "
        "the site's session cookie (same origin: the user's own executions, or all for staff)."
    )
    errors = {
        str(code): {
            "description": text,
            "content": {"application/json": {"schema": error_schema}},
        }
        for code, text in ERROR_RESPONSES.items()
        if code != 503
    }
    errors["401"]["description"] += ", invalid_stream_token or expired_stream_token"
    return {
        "operationId": "executions_events_stream",
        "summary": "Stream an execution's events",
        "description": description,
        "tags": ["executions"],
        "x-required-scopes": ["executions:read"],
        "parameters": [
            {"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "Last-Event-ID",
                "in": "header",
                "schema": {"type": "integer", "minimum": 0},
                "description": "Replay exactly the events after this id.",
            },
            {
                "name": "last_event_id",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0},
                "description": "The same, for clients that cannot set headers.",
            },
            {
                "name": "token",
                "in": "query",
                "schema": {"type": "string"},
                "description": "A stream token, instead of a key (POST .../stream-token).",
            },
        ],
        "security": [{name: []} for name in SECURITY_SCHEMES],
        "responses": {
            "200": {
                "description": "The event stream.",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'retry: 3000\n\nevent: connected\ndata: {"type": "connected", '
                        '"execution_id": "exec_...", "status": "running"}\n\nid: 1\nevent: '
                        'execution:started\ndata: {"type": "execution:started", ...}\n\n',
                    }
                },
            },
            "204": {"description": "The client already has the terminal event: stop."},
            **errors,
        },
    }


def is_executions_api_view(callback):
    view = getattr(callback, "cls", None)
    return (
        isinstance(view, type)
        and issubclass(view, ScopedAPIView)
        and view.__module__.startswith("executions.")
    )


def executions_endpoints_only(endpoints):
    """drf-spectacular preprocessing hook: keep only this app's API endpoints."""
    return [endpoint for endpoint in endpoints if is_executions_api_view(endpoint[3])]


def event_stream_path():
    """Return the stream's path template where the host mounts the app, as schema paths
    are written: from the site's root, without its script prefix."""
    path = reverse("executions:execution-events", kwargs={"execution_id": "EXECUTION_ID"})
    return "/" + path.removeprefix(get_script_prefix()).replace("EXECUTION_ID", "{execution_id}")


def add_event_stream(result, generator, request, public):
    """drf-spectacular postprocessing hook: document the (non-DRF) SSE endpoint."""
    error_schema = {"$ref": "#/components/schemas/ErrorEnvelope"}
    result["paths"][event_stream_path()] = {"get": stream_operation(error_schema)}
    return result


class SchemaView(SpectacularAPIView):
    """The API's OpenAPI schema (YAML, or JSON with ``?format=json``), for anyone."""

    # SpectacularAPIView takes these from the host's SPECTACULAR_SETTINGS when it is
    # imported: a host's SERVE_PUBLIC = False would leave out every endpoint a request
    # without a key may not call (all of ours), and its SERVE_URLCONF would hide them.
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []
    versioning_class = None
    # In no host's own schema: drf-spectacular's views take the host's DEFAULT_SCHEMA_CLASS,
    # which need not be drf-spectacular's, and generating the host's schema (as `check
    # --deploy` does, drf_spectacular.E001) then fails on them.
    schema = None
    generator_class = SchemaGenerator
    serve_public = True
    urlconf = None
    custom_settings = SCHEMA_SETTINGS


class DocsView(SpectacularSwaggerView):
    """Swagger UI over ``SchemaView``, for anyone."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []
    versioning_class = None
    schema = None  # as SchemaView's
    url_name = "executions:schema"
    title = TITLE

    def get(self, request, *args, **kwargs):
        with patched_settings(SCHEMA_SETTINGS):
            return super().get(request, *args, **kwargs)
