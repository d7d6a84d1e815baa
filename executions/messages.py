"""The channel-layer message that carries a recorded event to the streams of every
process: built by the publisher, read back by the fan-out."""

from .conf import get_config
from .log import Item

# Channels maps a message's type to a consumer's handler name; this one has none.
MESSAGE_TYPE = "execution.event"


def group_name(execution_id):
    """Return the channel-layer group an execution's events are sent to."""
    return f"{get_config()['GROUP_PREFIX']}{execution_id}"


def build(execution_id, item):
    """Return the message that carries ``item``, an event of ``execution_id``."""
    return {
        "type": MESSAGE_TYPE,
        "execution_id": execution_id,
        "seq": item.seq,
        "event": item.event,
        "frame": item.frame.decode(),
    }


def parse(message):
    """Return ``(execution_id, Item)`` for a message ``build()`` made, or None for any
    other message."""
    if message.get("type") != MESSAGE_TYPE:
        return None
    item = Item(
        message["seq"], message["event"], message["frame"].encode(), message.get("recorded_at", 0)
    )
    return message["execution_id"], item
