"""Per-process fan-out of execution events to the streams open in this process.

However many streams watch one execution, a process joins that execution's channel-layer
group once, through a single channel that one task receives from. Each watched execution
(a ``Topic``) hands its events, in sequence order and without gaps, to its streams'
subscriptions: an event the layer did not bring (dropped over capacity, lost in a Redis
restart, sent in a process whose in-memory layer this one cannot hear) is read from the
log first. One ticker per process sends keepalives and re-checks the grants of every
stream, so an open stream waits on nothing but its own subscription.
"""

import asyncio
import contextlib
import contextvars
import logging
import signal
import threading
import time
import weakref
from functools import cache

from channels.layers import InMemoryChannelLayer, get_channel_layer

from . import messages, metrics, sessions, slots
from .conf import get_config
from .log import log_batches
from .models import Execution
from .workflows import fail_abandoned

logger = logging.getLogger(__name__)

# Seconds between retries of a failed layer or database call; also the poll interval of
# an execution whose group could not be joined.
RETRY_DELAY = 1.0
# The ticker runs this many times per keepalive interval: a stream is never silent for
# longer than the interval, and a key that may no longer read is noticed within it.
TICKS_PER_KEEPALIVE = 4


# Why a stream ends, as the metrics name it (executions_stream_closes_total).
TERMINAL, CLIENT_LEFT = "terminal", "client_left"
TOO_SLOW, GRANT_REVOKED, SHUTDOWN = "too_slow", "grant_revoked", "shutdown"
DELETED = "execution_deleted"


def shared_task(coro, name):
    """A task that serves every stream of the process: started from whichever stream came
    first, it must not carry that stream's context (its request id in the log lines)."""
    return asyncio.create_task(coro, name=name, context=contextvars.Context())


class StreamEnded(Exception):
    """The stream must end now: its client is too slow, or its grant is void."""


@cache
def scope_set(scopes):
    """``frozenset(scopes)``, one for all the streams that require the same scopes."""
    return frozenset(scopes)


class Subscription:
    """One open stream's share of a topic: the events delivered to it and not yet taken.

    A list and at most one future, not an ``asyncio.Queue``: thousands of streams each
    hold one, and each event touches every one of them.
    """

    __slots__ = (
        "after_terminal",
        "ended",
        "from_seq",
        "grant",
        "items",
        "keepalive_due",
        "last_write",
        "queued_bytes",
        "replaying",
        "scopes",
        "waiter",
    )

    def __init__(self, grant, scopes, from_seq, after_terminal=False):
        self.grant, self.scopes = grant, scope_set(scopes)
        # Every event after this one reaches the subscription; those up to it are the
        # log's to give. No event follows it if it was the terminal one.
        self.from_seq, self.after_terminal = from_seq, after_terminal
        # While its stream replays the log, events are not queued: from_seq moves on, and
        # the stream reads them from the log too. A storm of replays queues nothing.
        self.replaying = True
        self.items = []
        self.queued_bytes = 0  # of the frames in items
        self.waiter = None
        self.ended = None  # why the stream must end (end()), or None
        self.keepalive_due = False
        self.last_write = time.monotonic()

    def put(self, items, size):
        """Queue ``items``, whose frames are ``size`` bytes together."""
        self.items.extend(items)
        self.queued_bytes += size
        self.wake()

    def end(self, reason):
        """End the stream: ``TOO_SLOW``, ``GRANT_REVOKED``, ``SHUTDOWN`` or ``DELETED``."""
        if not self.ended:
            self.ended = reason
        self.wake()

    def ask_for_keepalive(self):
        self.keepalive_due = True
        self.wake()

    def wake(self):
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self):
        """Return once there are items to take, a keepalive is due or the stream must end."""
        if self.items or self.ended or self.keepalive_due:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def guard(self, awaitable):
        """Await ``awaitable`` (a read of the log) unless the stream must end first: then
        give it up, its thread finishing on its own, and raise ``StreamEnded``."""
        task = asyncio.ensure_future(awaitable)
        try:
            while not task.done():
                if self.ended:
                    raise StreamEnded
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait({task, self.waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self.waiter = None
        except BaseException:
            task.cancel()
            raise
        return task.result()

    def take(self):
        """Return the items delivered since the last call, oldest first."""
        items, self.items = self.items, []
        self.queued_bytes = 0
        self.keepalive_due = False
        return items


class Topic:
    """One execution watched by this process: its own task joins the execution's group,
    follows it while any stream watches, then leaves the group."""

    def __init__(self, hub, execution_id, last_seq):
        self.hub, self.execution_id = hub, execution_id
        self.group = messages.group_name(execution_id)
        self.subscriptions = set()
        self.inbox = asyncio.Queue()
        self.last_seq = last_seq
        self.finished = False  # the terminal event was delivered
        self.pending = []  # delivered, not yet handed to the streams
        self.flush_handle = None
        self.last_flush = 0.0
        self.ready = asyncio.Event()
        self.task = shared_task(self.run(), f"executions-topic-{execution_id}")

    async def run(self):
        await self.hub.join(self.group)
        # What was recorded after last_seq, as the stream that made the topic read it, and
        # before the group was joined.
        await self.catch_up()
        while True:
            self.ready.set()
            await self.follow()
            await self.hub.leave(self.group)
            # A stream that subscribed while the group was being left needs it joined again.
            if not self.subscriptions:
                self.hub.forget(self)
                return
            await self.hub.join(self.group)

    async def follow(self):
        """Deliver the execution's events until no stream is left."""
        while self.subscriptions:
            try:
                async with asyncio.timeout(self.hub.poll_interval(self.group)):
                    seq = await self.inbox.get()
            except TimeoutError:
                # Nothing heard: re-join (a restarted Redis forgot the group), read the log
                # for anything the layer did not bring, and end the streams of an
                # execution that was deleted (pruned) meanwhile: no terminal event comes.
                await self.hub.join(self.group)
                await self.catch_up()
                if not await self.still_exists():
                    for subscription in self.subscriptions:
                        subscription.end(DELETED)
                continue
            if seq > self.last_seq:
                await self.catch_up()

    def remove(self, subscription):
        self.subscriptions.discard(subscription)
        if not self.subscriptions:
            self.wake()

    def wake(self):
        """Have follow() look again at once: at its streams and at its group."""
        self.inbox.put_nowait(0)  # no event has sequence number 0

    async def still_exists(self):
        try:
            return await sessions.run("log", self.execution_exists)
        except Exception as exc:
            logger.warning("Looking up execution %s failed: %r", self.execution_id, exc)
            return True

    def execution_exists(self):
        return Execution.objects.filter(pk=self.execution_id).exists()

    async def catch_up(self):
        """Deliver everything logged after ``last_seq``, in order."""
        try:
            async for batch in log_batches(self.execution_id, self.last_seq):
                for item in batch:
                    self.deliver(item)
        except Exception as exc:
            logger.warning("Reading the log of %s failed: %r", self.execution_id, exc)

    def receive(self, item):
        """Take an event from the channel layer: deliver it if it is next, else fill the gap."""
        if item.seq == self.last_seq + 1 and self.inbox.empty():
            self.deliver(item)
        elif item.seq > self.last_seq:
            self.inbox.put_nowait(item.seq)

    def deliver(self, item):
        """Hand the next event to every stream, together with the others that arrive
        within ``BATCH_INTERVAL`` of the last hand-out."""
        if item.seq != self.last_seq + 1:
            return
        self.last_seq = item.seq
        self.finished = item.is_terminal
        self.pending.append(item)
        if self.flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = self.last_flush + get_config()["BATCH_INTERVAL"] - loop.time()
            self.flush_handle = loop.call_later(max(delay, 0), self.flush)

    def flush(self):
        self.flush_handle = None
        self.last_flush = asyncio.get_running_loop().time()
        items, self.pending = self.pending, []
        now = time.time()
        for item in items:
            if item.recorded_at:
                metrics.DELIVERY_LAG.observe(now - item.recorded_at)
        size = sum(len(item.frame) for item in items)
        config = get_config()
        limit, byte_limit = config["STREAM_QUEUE_SIZE"], config["STREAM_QUEUE_BYTES"]
        too_slow = []
        replaying = 0
        for subscription in self.subscriptions:
            if subscription.replaying:
                subscription.from_seq = items[-1].seq
                subscription.after_terminal = items[-1].is_terminal
                replaying += 1
                continue
            queued = len(subscription.items)
            # An empty queue takes any batch: an event is as large as MAX_EVENT_BYTES lets it.
            fits = not queued or subscription.queued_bytes + size <= byte_limit
            if fits and queued + len(items) <= limit:
                subscription.put(items, size)
            else:
                too_slow.append(subscription)
        metrics.LIVE.inc(len(items) * (len(self.subscriptions) - len(too_slow) - replaying))
        for subscription in too_slow:
            # The client resumes from the log when it reconnects with Last-Event-ID.
            self.subscriptions.discard(subscription)
            subscription.end(TOO_SLOW)


class Hub:
    """This process's (this event loop's) subscriptions to the channel layer.

    A stream's own task never waits on the channel layer: its topic's task and the hub's
    receiver do, so a client that goes away cancels nothing but a wait on its own
    subscription (Python 3.11's ``wait_for``, inside redis-py, can swallow a cancel).
    """

    def __init__(self, layer):
        self.layer = layer
        self.topics = {}
        self.channel = None
        self.channel_ready = asyncio.Event()
        self.receiver = None
        self.ticker = None
        self.joined = set()
        self.last_reaped = 0.0
        self.shutting_down = False

    async def subscribe(self, execution_id, grant, scopes, last_seq):
        """Return a ``Subscription`` to the execution's events after its ``from_seq``, in
        order, that ends once ``grant`` is no longer valid or lacks one of ``scopes``;
        ``last_seq`` is the execution's last sequence number as the caller read it."""
        self.start()
        # No await between the look-up and the insert: streams subscribing at the same
        # time must share one Topic, or those left on a replaced one hear only its polls.
        topic = self.topics.get(execution_id)
        if topic is None:
            topic = self.topics[execution_id] = Topic(self, execution_id, last_seq)
        subscription = Subscription(grant, scopes, topic.last_seq, topic.finished)
        if self.shutting_down:
            subscription.end(SHUTDOWN)
        topic.subscriptions.add(subscription)
        try:
            await topic.ready.wait()
        except BaseException:
            # The client went away before its stream began, so event_stream's finally
            # never runs: give the subscription back here.
            self.unsubscribe(execution_id, subscription)
            raise
        return subscription

    def unsubscribe(self, execution_id, subscription):
        topic = self.topics.get(execution_id)
        if topic is not None:
            topic.remove(subscription)

    def forget(self, topic):
        """Drop a topic that has left its group; stop once nothing is watched here."""
        if self.topics.get(topic.execution_id) is topic:
            del self.topics[topic.execution_id]
        if not self.topics:
            self.stop()

    def shut_down(self):
        """End every stream of this process: the server is stopping, and its clients
        reconnect (with Last-Event-ID) to another one."""
        self.shutting_down = True
        for topic in self.topics.values():
            for subscription in topic.subscriptions:
                subscription.end(SHUTDOWN)

    def start(self):
        end_streams_on_sigterm()
        if self.receiver is None and self.layer is not None:
            self.receiver = shared_task(self.receive_forever(), "executions-hub")
        if self.ticker is None:
            self.ticker = shared_task(self.tick_forever(), "executions-ticker")

    def stop(self):
        """Stop receiving and ticking, once no execution is watched here."""
        # Only then, so a message the layer had already taken when receive() was
        # cancelled is one nobody here wanted.
        receiver, self.receiver, self.channel = self.receiver, None, None
        ticker, self.ticker = self.ticker, None
        self.channel_ready = asyncio.Event()
        self.joined.clear()
        for task in (receiver, ticker):
            if task is not None:
                task.cancel()

    def poll_interval(self, group):
        """How long a topic waits for the layer before reading the log itself."""
        configured = get_config()["POLL_INTERVAL"]
        if configured is None:
            in_memory = self.layer is None or isinstance(self.layer, InMemoryChannelLayer)
            configured = 0.25 if in_memory else get_config()["KEEPALIVE_INTERVAL"]
        return configured if group in self.joined else min(configured, RETRY_DELAY)

    async def join(self, group):
        if self.layer is None:
            return  # no channel layer: the topic reads the log every poll interval
        if self.channel is None:
            # The receiver is still creating this process's channel (or cannot reach the
            # layer): wait a moment, else the topic polls fast and joins later.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_DELAY):
                    await self.channel_ready.wait()
            if self.channel is None:
                return
        try:
            await self.layer.group_add(group, self.channel)
            self.joined.add(group)
        except Exception as exc:
            self.joined.discard(group)
            metrics.LAYER_ERRORS.labels("join").inc()
            logger.warning("Joining channel-layer group %s failed: %r", group, exc)

    async def leave(self, group):
        self.joined.discard(group)
        if self.channel is None:
            return
        try:
            await self.layer.group_discard(group, self.channel)
        except Exception as exc:
            metrics.LAYER_ERRORS.labels("leave").inc()
            logger.warning("Leaving channel-layer group %s failed: %r", group, exc)

    async def receive_forever(self):
        # Looping only while this task is the hub's receiver: a cancel that redis-py
        # swallowed still ends it.
        this = asyncio.current_task()
        channel = None
        while self.receiver is this:
            try:
                if channel is None:
                    channel = await self.layer.new_channel(prefix="executions-fanout.")
                    if self.receiver is not this:
                        return
                    self.channel = channel
                    self.channel_ready.set()
                msg = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.LAYER_ERRORS.labels("receive").inc()
                logger.warning("Channel layer receive failed, retrying: %r", exc)
                # Redis may have restarted and forgotten every group: each topic polls
                # fast from now on, and re-joins, until its group is joined again.
                self.joined.clear()
                for topic in self.topics.values():
                    topic.wake()
                await asyncio.sleep(RETRY_DELAY)
                continue
            parsed = messages.parse(msg)
            if parsed is None:
                continue
            execution_id, items = parsed
            topic = self.topics.get(execution_id)
            if topic is not None:
                for item in items:
                    topic.receive(item)

    async def tick_forever(self):
        this = asyncio.current_task()
        grant_check = None
        try:
            while self.ticker is this:
                interval = get_config()["KEEPALIVE_INTERVAL"]
                await asyncio.sleep(interval / TICKS_PER_KEEPALIVE)
                subscriptions = [s for topic in self.topics.values() for s in topic.subscriptions]
                quiet_since = time.monotonic() - interval * (1 - 1 / TICKS_PER_KEEPALIVE)
                for subscription in subscriptions:
                    if subscription.last_write <= quiet_since:
                        subscription.ask_for_keepalive()
                # Beside the ticks, one at a time: a database that hangs must not stop the
                # keepalives.
                if grant_check is None or grant_check.done():
                    grant_check = asyncio.create_task(
                        self.end_invalid(subscriptions), name="executions-grant-check"
                    )
        finally:
            if grant_check is not None:
                grant_check.cancel()

    async def fail_abandoned(self):
        """Now and then, fail the executions whose worker stopped (and so end their
        streams, here and everywhere)."""
        now = time.monotonic()
        if now - self.last_reaped < get_config()["HEARTBEAT_TIMEOUT"] / 2:
            return
        self.last_reaped = now
        try:
            await sessions.run("check", fail_abandoned)
        except Exception as exc:
            logger.warning("Failing abandoned executions failed: %r", exc)

    async def end_invalid(self, subscriptions):
        """End the subscriptions whose grant is no longer valid or lacks their scopes: one
        query per kind of grant, however many streams there are. And tell the other
        processes that this one's stream slots still count."""
        try:
            await sessions.run("check", slots.renew)
        except Exception as exc:
            logger.warning("Renewing this process's stream slots failed: %r", exc)
        await self.fail_abandoned()
        by_kind = {}
        for subscription in subscriptions:
            by_kind.setdefault(type(subscription.grant), []).append(subscription)
        for kind, of_kind in by_kind.items():
            try:
                held = await sessions.run(
                    "check", kind.current_scopes, [subscription.grant for subscription in of_kind]
                )
            except Exception as exc:
                # The database is unreachable: keep streaming what was recorded before.
                logger.warning("Re-checking the streams' %s failed: %r", kind.__name__, exc)
                continue
            for subscription in of_kind:
                if not subscription.scopes <= held.get(subscription.grant, frozenset()):
                    subscription.end(GRANT_REVOKED)


_hubs = weakref.WeakKeyDictionary()
_sigterm_chained = False


def end_streams_on_sigterm():
    """Have SIGTERM end the loop's streams at once, then reach the server's own handler.

    ASGI servers stop gracefully on SIGTERM: they close their sockets, then wait for
    every response to finish, and an event stream may last for hours. So the handler the
    server installed is chained, once per process (``EXECUTIONS["END_STREAMS_ON_SIGTERM"]``):
    streams end cleanly, clients reconnect elsewhere, and the server exits.
    """
    global _sigterm_chained
    if not get_config()["END_STREAMS_ON_SIGTERM"] or _sigterm_chained:
        return
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers are set from the main thread only
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return  # the server handles no SIGTERM of its own: it dies as it always did

    def on_sigterm(signum, frame):
        for hub_loop, hub in list(_hubs.items()):
            if not hub_loop.is_closed():
                hub_loop.call_soon_threadsafe(hub.shut_down)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_chained = True


def get_hub():
    """Return the running event loop's hub."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(get_channel_layer(get_config()["CHANNEL_LAYER"]))
    return hub
