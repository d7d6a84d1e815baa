"""Send recorded events to their execution's channel-layer group, from sync or async code.

Sending is the fast path only: the event is already committed to the log, so a send that
fails is logged and streams fill the gap from the log.
"""

import asyncio
import atexit
import contextvars
import logging
import threading
import time
import weakref

from asgiref.sync import SyncToAsync
from channels.layers import get_channel_layer

from . import metrics
from .conf import get_config
from .messages import group_name, parse

logger = logging.getLogger(__name__)

SEND_TIMEOUT = 5.0


async def apublish(msg):
    """Send ``msg`` to its execution's group; log and swallow a layer failure."""
    layer = get_channel_layer(get_config()["CHANNEL_LAYER"])
    if layer is None:
        return
    try:
        await asyncio.wait_for(layer.group_send(group_name(msg["execution_id"]), msg), SEND_TIMEOUT)
    except Exception as exc:
        metrics.LAYER_ERRORS.labels("send").inc()
        execution_id, items = parse(msg)
        logger.warning(
            "Events %s#%s-%s not sent to the channel layer (streams will read them from the "
            "log): %r",
            execution_id,
            items[0].seq,
            items[-1].seq,
            exc,
        )


class Sender:
    """Sends messages to the channel layer from one event loop, one after the other, in the
    order they were handed over; handing one over never waits on the layer."""

    def __init__(self, loop):
        self.loop = loop
        self.queue = asyncio.Queue()
        self.task = None
        self.unsent = 0
        self.sent = threading.Condition()

    def put(self, msg):
        """Queue ``msg`` from any thread."""
        with self.sent:
            self.unsent += 1
        self.loop.call_soon_threadsafe(self._put, msg)

    def _put(self, msg):
        self.queue.put_nowait(msg)
        if self.task is None or self.task.done():
            # Sending serves every producer of the loop: none of their contexts.
            self.task = self.loop.create_task(
                self._send_all(), name="executions-publisher", context=contextvars.Context()
            )

    async def _send_all(self):
        while not self.queue.empty():
            await apublish(self.queue.get_nowait())
            with self.sent:
                self.unsent -= 1
                self.sent.notify_all()

    def wait(self, timeout):
        """Wait until every queued message is sent (or ``timeout``); return whether it was."""
        with self.sent:
            return self.sent.wait_for(lambda: self.unsent == 0, timeout)


class _SenderThread:
    """One event loop thread per process for producers outside a server.

    ``async_to_sync(group_send)`` from plain sync code starts a new loop per call, and
    channels_redis opens a new Redis connection for each; a worker that records many
    events would pay a connection per event.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.sender = None

    def get(self):
        with self.lock:
            if self.sender is None or not self.sender.loop.is_running():
                loop = asyncio.new_event_loop()
                started = threading.Event()
                loop.call_soon(started.set)
                threading.Thread(
                    target=loop.run_forever, name="executions-publisher", daemon=True
                ).start()
                started.wait()
                self.sender = Sender(loop)
            return self.sender


_sender_thread = _SenderThread()
_loop_senders = weakref.WeakKeyDictionary()


def sender_for(loop):
    sender = _loop_senders.get(loop)
    if sender is None:
        sender = _loop_senders[loop] = Sender(loop)
    return sender


def publish(msg):
    """Queue ``msg`` for its execution's group, from sync code; return at once.

    Messages go out in the order they were published: a recorder publishes each event
    after its transaction commits, so streams hear them in sequence order, and any that
    the layer loses are read from the log.
    """
    msg["recorded_at"] = time.time()  # after the commit: the start of the delivery lag
    # Inside sync_to_async (a sync view or ORM call under ASGI) the server's loop is
    # known, and the layer's in-memory queues must be touched from that loop only.
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is not None and loop.is_running():
        sender_for(loop).put(msg)
    else:
        _sender_thread.get().put(msg)


def publish_all(msgs):
    """``publish()`` each of ``msgs``, in order."""
    for msg in msgs:
        publish(msg)


def flush(timeout=SEND_TIMEOUT):
    """Wait until this process's producers' messages are sent, or ``timeout`` seconds;
    return whether they were. Called at exit, so a last event goes out at once."""
    sender = _sender_thread.sender
    return sender is None or sender.wait(timeout)


atexit.register(flush)
