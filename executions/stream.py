"""``GET <mount>/executions/:id/events``: an execution's events as server-sent events."""

import re
import time

from django.http import HttpResponse

from apikeys.asyncdb import run_in_short_session
from apikeys.auth import check_scopes
from apikeys.exceptions import (
    MethodNotAllowed,
    ResourceNotFound,
    ValidationError,
    answers_api_errors,
)

from .asgi import EventStreamResponse, streams_events
from .events import KEEPALIVE_FRAME, opening_frames
from .fanout import get_hub
from .grants import grant_for_request
from .log import log_batches
from .models import Execution

LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")
SCOPES = ("executions:read",)


def last_event_id(request):
    """Return the id to resume after (``Last-Event-ID`` header, else ``?last_event_id=``)."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        raw = request.GET.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not LAST_EVENT_ID.fullmatch(raw):
        raise ValidationError(
            "Last-Event-ID must be a non-negative integer.",
            details={"field": "Last-Event-ID", "value": raw[:100]},
        )
    return int(raw)


def open_stream(request, execution_id):
    """Return ``(grant, execution, last_event_id)`` for a request to stream
    ``execution_id``, or raise the ``APIError`` to answer instead; it runs in one short
    database session."""
    grant = grant_for_request(request, execution_id)
    check_scopes(grant, SCOPES)
    if request.method != "GET":
        raise MethodNotAllowed(f'Method "{request.method}" not allowed.', headers={"Allow": "GET"})
    after = last_event_id(request)
    execution = Execution.objects.visible_to(grant).filter(pk=execution_id).first()
    if execution is None:
        raise ResourceNotFound("execution", execution_id)
    return grant, execution, after


@streams_events
@answers_api_errors
async def execution_events(request, execution_id):
    grant, execution, after = await run_in_short_session(open_stream, request, execution_id)
    if execution.is_finished and after is not None and after >= execution.last_seq:
        # The client has the terminal event; 204 tells EventSource to stop reconnecting.
        return HttpResponse(status=204)
    response = EventStreamResponse(event_stream(execution.pk, execution.status, grant, after or 0))
    # GZipMiddleware would compress each frame on its own and double a stream's memory;
    # it leaves alone a response to a request that did not accept gzip.
    request.META.pop("HTTP_ACCEPT_ENCODING", None)
    return response


async def event_stream(execution_id, status, grant, last_sent):
    """Yield the stream's bytes: opening frames, the log after ``last_sent``, then live events
    until the terminal one, or until ``grant`` no longer lets it read.

    Subscribing comes before reading the log, so nothing falls between replay and live;
    sequence numbers drop the overlap and reveal any gap, which the log fills.
    """
    hub = get_hub()
    subscription = await hub.subscribe(execution_id, grant, SCOPES)
    try:
        yield opening_frames(execution_id, status)
        async for batch in log_batches(execution_id, last_sent):
            subscription.last_write = time.monotonic()
            yield b"".join(item.frame for item in batch)
            last_sent = batch[-1].seq
            if batch[-1].is_terminal:
                return
        while True:
            await subscription.wait()
            if subscription.ended:
                return  # the client is too slow (it resumes from the log) or its grant is void
            keepalive_due = subscription.keepalive_due
            frames = []
            finished = False
            for item in subscription.take():
                if item.seq <= last_sent:
                    continue
                if item.seq > last_sent + 1:
                    async for batch in log_batches(execution_id, last_sent, until=item.seq - 1):
                        frames.extend(logged.frame for logged in batch)
                        last_sent = batch[-1].seq
                frames.append(item.frame)
                last_sent = item.seq
                if item.is_terminal:
                    finished = True
                    break
            if keepalive_due and not frames:
                frames.append(KEEPALIVE_FRAME)
            if frames:
                subscription.last_write = time.monotonic()
                yield b"".join(frames)
            if finished:
                return
    finally:
        hub.unsubscribe(execution_id, subscription)
