"""``GET /api/v1/executions/:id/events``: an execution's events as server-sent events."""

import re
import time

from django.http import HttpResponse

from apikeys.asyncdb import run_in_short_session
from apikeys.auth import scopes_required
from apikeys.exceptions import MethodNotAllowed, ResourceNotFound, ValidationError

from .asgi import streams_events
from .conf import get_config
from .events import KEEPALIVE_FRAME, EventStreamResponse, opening_frames
from .fanout import aread_log, get_hub
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


@streams_events
@scopes_required(*SCOPES)
async def execution_events(request, execution_id):
    if request.method != "GET":
        raise MethodNotAllowed(f'Method "{request.method}" not allowed.', headers={"Allow": "GET"})
    after = last_event_id(request)
    execution = await run_in_short_session(
        lambda: Execution.objects.visible_to(request.api_key).filter(pk=execution_id).first()
    )
    if execution is None:
        raise ResourceNotFound("execution", execution_id)
    if execution.is_finished and after is not None and after >= execution.last_seq:
        # The client has the terminal event; 204 tells EventSource to stop reconnecting.
        return HttpResponse(status=204)
    response = EventStreamResponse(
        event_stream(execution.pk, execution.status, request.api_key.pk, after or 0)
    )
    # GZipMiddleware would compress each frame on its own and double a stream's memory;
    # it leaves alone a response to a request that did not accept gzip.
    request.META.pop("HTTP_ACCEPT_ENCODING", None)
    return response


async def event_stream(execution_id, status, key_id, last_sent):
    """Yield the stream's bytes: opening frames, the log after ``last_sent``, then live events
    until the terminal one, or until the API key ``key_id`` may no longer read.

    Subscribing comes before reading the log, so nothing falls between replay and live;
    sequence numbers drop the overlap and reveal any gap, which the log fills.
    """
    hub = get_hub()
    subscription = await hub.subscribe(execution_id, key_id, SCOPES)
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
                return  # the client is too slow (it resumes from the log) or its key is void
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


async def log_batches(execution_id, after, until=None):
    """Yield the logged events after ``after`` (up to ``until``) in batches, ending at a
    terminal event."""
    batch_size = get_config()["REPLAY_BATCH_SIZE"]
    while True:
        batch = [
            item
            for item in await aread_log(execution_id, after)
            if until is None or item.seq <= until
        ]
        for index, item in enumerate(batch):
            if item.is_terminal:
                del batch[index + 1 :]
                break
        if not batch:
            return
        yield batch
        after = batch[-1].seq
        if len(batch) < batch_size or batch[-1].is_terminal:
            return
