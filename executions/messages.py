"""The channel-layer message that carries recorded events to the streams of every
process: built by the publisher, read back by the fan-out."""

from .conf import get_config
from .log import Item

# Channels maps a message's type to a consumer's handler name; this one has none. A
# process that does not know the type ignores the message and reads the log instead.
MESSAGE_TYPE = "execution.events"
# A batch's events go in messages of at most this many events and frame bytes (a single
# larger event goes alone): one channel-layer send per message, not per event.
MAX_EVENTS_PER_MESSAGE = 100
MAX_BYTES_PER_MESSAGE = 256 * 1024


def group_name(execution_id):
    """Return the channel-layer group an execution's events are sent to."""
    return f"{get_config()['GROUP_PREFIX']}{execution_id}"


def build(execution_id, items):
    """Return the messages that carry ``items``, consecutive events of ``execution_id``,
    in order."""
    msgs, run, size = [], [], 0
    for item in items:
        if run and (
            len(run) == MAX_EVENTS_PER_MESSAGE or size + len(item.frame) > MAX_BYTES_PER_MESSAGE
        ):
            msgs.append(_message(execution_id, run))
            run, size = [], 0
        run.append(item)
        size += len(item.frame)
    if run:
        msgs.append(_message(execution_id, run))
    return msgs


def _message(execution_id, items):
    return {
        "type": MESSAGE_TYPE,
        "execution_id": execution_id,
        "events": [[item.seq, item.event, item.frame.decode()] for item in items],
    }


def event_types(message):
    """Return the types of the events ``message`` carries, in order."""
    return [event for _, event, _ in message["events"]]


def parse(message):
    """Return ``(execution_id, [Item, ...])`` for a message ``build()`` made, or None for
    any other message."""
    if message.get("type") != MESSAGE_TYPE:
        return None
    recorded_at = message.get("recorded_at", 0)
    items = [
        Item(seq, event, frame.encode(), recorded_at) for seq, event, frame in message["events"]
    ]
    return message["execution_id"], items
