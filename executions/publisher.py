"""Send recorded events to their execution's channel-layer group, from sync or async code.

Sending is the fast path only: the event is already committed to the log, so a send that
fails is logged and streams fill the gap from the log.
"""

import asyncio
import logging
import threading

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

from .conf import get_config
from .messages import group_name

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
        logger.warning(
            "Event %s#%s not sent to the channel layer (streams will read it from the log): %r",
            msg["execution_id"],
            msg["seq"],
            exc,
        )


class _SenderLoop:
    """One event loop thread per process for sync producers.

    ``async_to_sync(group_send)`` from plain sync code starts a new loop per call, and
    channels_redis opens a new Redis connection for each; a worker that records many
    events would pay a connection per event.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.loop = None

    def run(self, coro):
        with self.lock:
            if self.loop is None or not self.loop.is_running():
                self.loop = asyncio.new_event_loop()
                started = threading.Event()
                self.loop.call_soon(started.set)
                threading.Thread(
                    target=self.loop.run_forever, name="executions-publisher", daemon=True
                ).start()
                started.wait()
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_sender_loop = _SenderLoop()


def publish(msg):
    """Send ``msg`` from sync code, on the server's own loop when there is one."""
    # Inside sync_to_async (a sync view or ORM call under ASGI) the server's loop is
    # known, and the layer's in-memory queues must be touched from that loop only. asgiref
    # leaves that loop in the thread's locals once the call is over, closed: only a loop
    # that still runs is the caller's.
    main_loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if main_loop is not None and main_loop.is_running():
        async_to_sync(apublish)(msg)
    else:
        _sender_loop.run(apublish(msg))
