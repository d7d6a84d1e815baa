"""``GET <mount>/executions/:id/events``: an execution's events as server-sent events."""

import logging
import re
import time

from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpResponse, QueryDict

from apikeys import logs
from apikeys.asyncdb import in_short_session
from apikeys.auth import check_scopes
from apikeys.exceptions import (
    MethodNotAllowed,
    ResourceNotFound,
    ValidationError,
    answers_api_errors,
)

from . import metrics, slots
from .asgi import EventStreamResponse, streams_events
from .events import KEEPALIVE_FRAME, opening_frames
from .fanout import CLIENT_LEFT, TERMINAL, StreamEnded, get_hub
from .grants import grant_for_request
from .log import FRAME, frames_of, is_last_batch, log_batches, read_batch
from .lookups import visible_execution

logger = logging.getLogger(__name__)

LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")
SCOPES = ("executions:read",)
MASKED = "********"  # stands for a token in a logged query string


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


def hide_token(request):
    """Mask ``?token=`` in the request's query string once the stream has read it.

    Django logs a request it answers with a 4xx or 5xx (``django.request``) after the view,
    with the request on the record: its repr, and a 500's report (mail_admins), show the
    query string, and the token is a credential.
    """
    if "token" not in request.GET:
        return
    query = request.GET.copy()
    query.setlist("token", [MASKED for _ in query.getlist("token")])
    request.META["QUERY_STRING"] = query.urlencode(safe="*")
    request.GET = QueryDict(request.META["QUERY_STRING"])


class Opening:
    """What a request to the stream found: who it is, what it streams, from where."""

    __slots__ = ("after", "execution", "first_batch", "grant", "slot")

    def __init__(self, grant, execution, after, first_batch=None, slot=None):
        self.grant, self.execution, self.after = grant, execution, after
        self.first_batch, self.slot = first_batch, slot


STREAMED_FIELDS = ("id", "status", "last_seq")  # all a stream reads of its execution


def open_stream(request, execution_id):
    """Return the ``Opening`` of a request to stream ``execution_id``, or raise the
    ``APIError`` to answer instead.

    It all runs in one short database session: the grant, the execution's visibility and
    the first batch of its history (read before subscribing to live events; what comes
    between is a gap the sequence numbers reveal, filled from the log).
    """
    grant = grant_for_request(request, execution_id)
    check_scopes(grant, SCOPES)
    if request.method != "GET":
        raise MethodNotAllowed(f'Method "{request.method}" not allowed.', headers={"Allow": "GET"})
    after = last_event_id(request) or 0
    execution = visible_execution(grant, execution_id, STREAMED_FIELDS)
    if execution is None:
        raise ResourceNotFound("execution", execution_id)
    if execution.is_finished and after >= execution.last_seq:
        return Opening(grant, execution, after)
    # Up to the last_seq just read: what comes after reaches the stream as a gap or live,
    # and the log cache can answer the whole batch.
    first_batch = read_batch(execution.pk, after, until=execution.last_seq)
    return Opening(grant, execution, after, first_batch, slots.acquire(grant.quota))


def opening_in_short_session(request, execution_id):
    """``open_stream()`` in a short session, once more on a new connection when the
    database dropped the one it had (a restart, a failover): a browser's EventSource gives
    up for good on a 500. Both times write the same (the key's last use), and the request
    counts once against the key's rate limits (``ratelimit.count()``)."""
    try:
        return in_short_session(open_stream, request, execution_id)
    except (OperationalError, InterfaceError) as exc:
        logger.warning("Opening a stream lost its database connection (%r): once more.", exc)
        return in_short_session(open_stream, request, execution_id)


# A sync view, so that under StreamingASGIHandler its middleware, its database session and
# the view run in one trip to an "open" thread; the stream itself is async. It is never
# atomic (ATOMIC_REQUESTS): its session ends before its response does.
@streams_events
@transaction.non_atomic_requests
@answers_api_errors
def execution_events(request, execution_id):
    try:
        opening = opening_in_short_session(request, execution_id)
    finally:
        hide_token(request)
    if opening.first_batch is None:
        # The client has the terminal event; 204 tells EventSource to stop reconnecting.
        return HttpResponse(status=204)
    metrics.STREAM_OPENS.labels(type(opening.grant).__name__).inc()
    logs.grant.set(opening.grant.display)
    slot = opening.slot
    response = EventStreamResponse(event_stream(opening), slot and slot.release)
    # GZipMiddleware would compress each frame on its own and double a stream's memory;
    # it leaves alone a response to a request that did not accept gzip.
    request.META.pop("HTTP_ACCEPT_ENCODING", None)
    return response


async def event_stream(opening):
    """Yield the stream's bytes: opening frames, the log after ``opening.after``, then live
    events until the terminal one, or until the grant no longer lets it read.

    Subscribing comes before reading the rest of the log, so nothing falls between replay
    and live; sequence numbers drop the overlap and reveal any gap, which the log fills.
    """
    metrics.OPEN_STREAMS.inc()
    reason, subscription = CLIENT_LEFT, None
    execution, first = opening.execution, opening.first_batch
    execution_id = execution.pk
    logger.info(
        "Stream opened", extra={"execution_id": execution_id, "last_event_id": opening.after}
    )
    try:
        start = opening_frames(execution_id, execution.status) + frames_of(first)
        replayed = len(first)
        if first and first[-1].is_terminal:
            reason = TERMINAL
            metrics.REPLAY_SIZE.observe(replayed)
            yield start
            return
        last_sent = first[-1].seq if first else opening.after
        read_on = bool(first) and not is_last_batch(first)
        hub = get_hub()
        subscription = await hub.subscribe(execution_id, opening.grant, SCOPES, execution.last_seq)
        del opening, execution, first  # an open stream keeps none of them
        subscription.last_write = time.monotonic()
        yield start
        del start
        while True:
            replay = history(
                execution_id, last_sent, read_on, subscription.from_seq, subscription.guard
            )
            read_any = False
            # Not "async for": its StopAsyncIteration would pass through this frame, whose
            # frame object, made for the traceback, an idle stream would then keep.
            while (batch := await anext(replay, None)) is not None:
                if subscription.ended:
                    raise StreamEnded  # ended while it replayed from the log cache
                read_any = True
                replayed += len(batch)
                subscription.last_write = time.monotonic()
                yield frames_of(batch)
                last_sent = batch[-1].seq
                if batch[-1].is_terminal:
                    reason = TERMINAL
                    return
            replay = batch = None  # an idle stream keeps no spent generator, no sent batch
            # Events came while it replayed (from_seq moved on): read them too, then take
            # events live, with no await between the last look and the switch.
            read_on = False
            # Nothing more in the log (caught up, or the execution was deleted meanwhile).
            if last_sent >= subscription.from_seq or not read_any:
                subscription.replaying = False
                break
        metrics.REPLAY_SIZE.observe(replayed)
        metrics.FROM_LOG.inc(replayed)
        if subscription.after_terminal:
            reason = TERMINAL  # before this stream subscribed (its Last-Event-ID is beyond)
            return
        while True:
            await subscription.wait()
            if subscription.ended:
                reason = subscription.ended
                return
            keepalive_due = subscription.keepalive_due
            frames = []
            finished = False
            for item in subscription.take():
                if item.seq <= last_sent:
                    if item.is_terminal:
                        # A Last-Event-ID beyond the log: the client claims more than was
                        # recorded, and the execution has now ended all the same.
                        finished = True
                        break
                    continue
                if item.seq > last_sent + 1:
                    gap = log_batches(
                        execution_id, last_sent, until=item.seq - 1, guard=subscription.guard
                    )
                    async for batch in gap:
                        metrics.FROM_LOG.inc(len(batch))
                        frames.extend(map(FRAME, batch))
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
                reason = TERMINAL
                return
    except StreamEnded:
        reason = subscription.ended  # while it waited on the log
    finally:
        if subscription is not None:
            hub.unsubscribe(execution_id, subscription)
        metrics.OPEN_STREAMS.dec()
        metrics.STREAM_CLOSES.labels(reason).inc()
        logger.info("Stream closed", extra={"execution_id": execution_id, "reason": reason})


async def history(execution_id, after, read_on, through, guard):
    """Yield the logged events after ``after`` in batches: all of them if ``read_on``
    (the first batch was full), else those up to ``through``."""
    if read_on:
        async for batch in log_batches(execution_id, after, guard=guard):
            yield batch
            after = batch[-1].seq
            if batch[-1].is_terminal:
                return
    if after < through:
        async for batch in log_batches(execution_id, after, until=through, guard=guard):
            yield batch
