"""The event log as streams read it. Every read goes through ``read_batch()``: a stream's
replay and gap filling, and a topic's catching up, alike; from the log cache
(``executions.logcache``) where it can, from the database (``read_log()``) for the rest."""

from bisect import bisect_right
from operator import attrgetter
from typing import NamedTuple

from django.db import connections, router

from apikeys.compiled import CompiledQuery

from . import metrics, sessions
from .conf import get_config
from .events import TERMINAL_EVENTS, frame
from .logcache import LOG_CACHE
from .models import Event


class Item(NamedTuple):
    """One recorded event as streams send it (a tuple: half the cost of a frozen
    dataclass to build, and a replay of the log builds one per event)."""

    seq: int
    event: str
    frame: bytes
    recorded_at: float = 0.0  # a live event's commit time (time.time()); 0 from the log

    @property
    def is_terminal(self):
        return self.event in TERMINAL_EVENTS


EVENT, FRAME = attrgetter("event"), attrgetter("frame")

LOG_AFTER = CompiledQuery(
    lambda limit, execution_id, after: (
        Event.objects.filter(execution_id=execution_id, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "type", "data")[:limit]
    )
)


def read_log(execution_id, after_seq, limit):
    """Return up to ``limit`` logged events of an execution after ``after_seq``, as Items."""
    using = router.db_for_read(Event)
    rows = LOG_AFTER.rows(using, limit, execution_id=execution_id, after=after_seq)
    return [Item(seq, event, frame(seq, event, data)) for seq, event, data in rows]


def read_batch(execution_id, after, until=None):
    """Return the next batch of logged events after ``after``: at most
    ``REPLAY_BATCH_SIZE``, none after ``until``, and none after a terminal event.

    What the process read lately comes from ``LOG_CACHE``; the rest from the database,
    and goes into the cache when read outside a transaction.
    """
    batch, complete = cached_events(execution_id, after, until)
    metrics.READ_FROM_CACHE.inc(len(batch))
    if not complete:
        size = get_config()["REPLAY_BATCH_SIZE"]
        read = read_log(execution_id, batch[-1].seq if batch else after, size - len(batch))
        metrics.READ_FROM_DATABASE.inc(len(read))
        if not connections[router.db_for_read(Event)].in_atomic_block:
            LOG_CACHE.put(execution_id, read)
        batch += read
    return ended(batch, until)


def cached_batch(execution_id, after, until=None):
    """Return ``read_batch()``'s answer when the cache holds all of it, else None."""
    batch, complete = cached_events(execution_id, after, until)
    if not complete:
        return None
    metrics.READ_FROM_CACHE.inc(len(batch))
    return ended(batch, until)


def cached_events(execution_id, after, until):
    """Return the cached events after ``after`` (at most a batch), and whether they are
    all that ``read_batch()`` answers: a whole batch, all up to ``until``, or the end."""
    size = get_config()["REPLAY_BATCH_SIZE"]
    events = LOG_CACHE.get(execution_id, after, size)
    last = events[-1].seq if events else after
    reached = until is not None and last >= until
    return events, reached or len(events) == size or (bool(events) and events[-1].is_terminal)


def ended(batch, until):
    """Return ``batch`` without what comes after ``until`` or after a terminal event."""
    if until is not None and batch and batch[-1].seq > until:
        del batch[bisect_right(batch, until, key=attrgetter("seq")) :]
    terminal = list(map(TERMINAL_EVENTS.__contains__, map(EVENT, batch)))
    if True in terminal:
        del batch[terminal.index(True) + 1 :]
    return batch


def frames_of(items):
    """Return the frames of ``items``, one after the other, as one chunk."""
    return b"".join(map(FRAME, items))


def is_last_batch(batch):
    """Whether no batch follows ``batch`` (``read_batch()``'s): short, or terminal."""
    return len(batch) < get_config()["REPLAY_BATCH_SIZE"] or batch[-1].is_terminal


async def log_batches(execution_id, after, until=None, guard=None):
    """Yield the logged events after ``after`` (up to ``until``) in ``read_batch()``
    batches, each read in a short database session, ending at a terminal event.

    ``guard(read)``, when given, awaits each read for the caller (and may give it up).
    """
    while True:
        batch = cached_batch(execution_id, after, until)
        if batch is None:
            read = sessions.run("log", read_batch, execution_id, after, until)
            batch = await (read if guard is None else guard(read))
        if not batch:
            return
        yield batch
        if is_last_batch(batch):
            return
        after = batch[-1].seq
