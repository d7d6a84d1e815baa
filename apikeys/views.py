"""The base of DRF views served with API keys, configured on the view itself so that a
host site's ``REST_FRAMEWORK`` defaults neither change it nor need to change for it."""

import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers, renderers
from rest_framework.exceptions import ParseError
from rest_framework.metadata import SimpleMetadata
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.views import APIView

from .authentication import APIKeyAuthentication
from .exceptions import exception_handler
from .openapi import ScopedAutoSchema
from .payloads import unstorable
from .permissions import HasScopes
from .throttling import APIKeyRateThrottle


class JSONRenderer(renderers.JSONRenderer):
    """Compact UTF-8 JSON, whatever the host's ``COMPACT_JSON`` and ``UNICODE_JSON``."""

    compact = True
    ensure_ascii = False
    strict = True


class JSONParser(parsers.JSONParser):
    """Strict JSON bodies (no ``NaN``), whatever the host's ``STRICT_JSON``, no larger than
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (413), and only what the database can store: no NUL,
    no lone surrogate, no deeper than ``payloads.MAX_DEPTH`` levels (400)."""

    strict = True

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(body) > limit:
            raise RequestDataTooBig("The request body is too large.")
        try:
            data = super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - it nests too deeply.") from None
        problem = unstorable(data)
        if problem:
            raise ParseError(f"The JSON cannot be accepted: {problem}.")
        return data


class ScopedAPIView(APIView):
    """A view for API keys: ``required_scopes`` (a tuple, ``()`` for any key) enforced,
    each request counted against its key's rate limits, JSON in and out, and every
    answer, errors included, in the contract's envelope."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [HasScopes]
    throttle_classes = [APIKeyRateThrottle]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]
    content_negotiation_class = DefaultContentNegotiation
    metadata_class = SimpleMetadata
    versioning_class = None
    schema = ScopedAutoSchema()

    def get_exception_handler(self):
        return exception_handler

    def check_permissions(self, request):
        # DRF throttles after the permission check; counting first spends a key's quota on
        # the requests its scopes refuse too, and gives their 403s the rate-limit headers.
        self.check_throttles(request)
        super().check_permissions(request)
