"""The event stream's wire format, shared by the recorder (which encodes each event once)
and the stream (which only concatenates frames), and the response that carries it."""

import json

from django.core.serializers.json import DjangoJSONEncoder
from django.http import StreamingHttpResponse

from .conf import get_config

CONNECTED = "connected"
EXECUTION_STARTED = "execution:started"
EXECUTION_PROGRESS = "execution:progress"
NODE_STARTED = "node:started"
NODE_COMPLETED = "node:completed"
NODE_FAILED = "node:failed"
EXECUTION_COMPLETED = "execution:completed"
EXECUTION_FAILED = "execution:failed"
EXECUTION_CANCELLED = "execution:cancelled"

EVENT_TYPES = (
    CONNECTED,
    EXECUTION_STARTED,
    EXECUTION_PROGRESS,
    NODE_STARTED,
    NODE_COMPLETED,
    NODE_FAILED,
    EXECUTION_COMPLETED,
    EXECUTION_FAILED,
    EXECUTION_CANCELLED,
)
TERMINAL_EVENTS = frozenset({EXECUTION_COMPLETED, EXECUTION_FAILED, EXECUTION_CANCELLED})

KEEPALIVE_FRAME = b": keepalive\n\n"
# The channel-layer message type; Channels maps "execution.event" to a handler name.
MESSAGE_TYPE = "execution.event"


def encode_data(event_type, execution_id, fields):
    """Return the one-line JSON of an event's ``data:``: ``type``, ``execution_id``, then fields."""
    payload = {"type": event_type, "execution_id": execution_id, **fields}
    return json.dumps(payload, cls=DjangoJSONEncoder, separators=(", ", ": "))


def frame(seq, event_type, data):
    """Return the SSE frame of a recorded event."""
    return f"id: {seq}\nevent: {event_type}\ndata: {data}\n\n".encode()


def opening_frames(execution_id, status):
    """Return what every stream sends first: the client's retry delay and ``connected``."""
    data = encode_data(CONNECTED, execution_id, {"status": status})
    return f"retry: {get_config()['RETRY_MS']}\n\nevent: {CONNECTED}\ndata: {data}\n\n".encode()


def group_name(execution_id):
    """Return the channel-layer group an execution's events are sent to."""
    return f"{get_config()['GROUP_PREFIX']}{execution_id}"


class EventStreamResponse(StreamingHttpResponse):
    """A ``text/event-stream`` response over an async iterator of frames (bytes), neither
    cached nor buffered by proxies."""

    def __init__(self, frames):
        super().__init__(frames, content_type="text/event-stream")
        self.frames = frames
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"

    def __aiter__(self):
        # The frames are bytes already: Django's mapping through make_bytes() is skipped.
        return aiter(self.frames)
