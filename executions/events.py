"""The event stream's wire format, shared by the recorder (which encodes each event once)
and the stream (which only concatenates frames)."""

import json

from django.core.serializers.json import DjangoJSONEncoder

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
