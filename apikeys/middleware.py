"""Request ids and rate-limit headers on every response."""

import re

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from . import logs
from .responses import REQUEST_ID_HEADER, request_id

INCOMING_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


class APIMiddleware:
    """Give each request an id (a well-formed incoming ``X-Request-ID`` is kept), put it on
    the request's log records (``apikeys.logs``), and add ``X-Request-ID`` and the
    ``X-RateLimit-*`` headers to its response.

    Sync and async capable, so an async view (the event stream) runs without a thread.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        self.process_request(request)
        return self.process_response(request, self.get_response(request))

    async def __acall__(self, request):
        self.process_request(request)
        return self.process_response(request, await self.get_response(request))

    @staticmethod
    def process_request(request):
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        if INCOMING_REQUEST_ID.match(incoming):
            request.request_id = incoming
        logs.request_id.set(request_id(request))

    @staticmethod
    def process_response(request, response):
        response[REQUEST_ID_HEADER] = request_id(request)
        rate_limit = getattr(request, "rate_limit", None)
        if rate_limit is not None:
            for name, value in rate_limit.headers().items():
                response.setdefault(name, value)
        return response
