"""The event log as streams read it. Every read goes through ``read_log()``: a stream's
replay and gap filling, and a topic's catching up, alike."""

from dataclasses import dataclass

from django.db import router

from apikeys.compiled import CompiledQuery

from . import sessions
from .conf import get_config
from .events import TERMINAL_EVENTS, frame
from .models import Event


@dataclass(frozen=True, slots=True)
class Item:
    """One recorded event as streams send it."""

    seq: int
    event: str
    frame: bytes
    recorded_at: float = 0.0  # a live event's commit time (time.time()); 0 from the log

    @property
    def is_terminal(self):
        return self.event in TERMINAL_EVENTS


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
    ``REPLAY_BATCH_SIZE``, none after ``until``, and none after a terminal event."""
    batch = [
        item
        for item in read_log(execution_id, after, get_config()["REPLAY_BATCH_SIZE"])
        if until is None or item.seq <= until
    ]
    for index, item in enumerate(batch):
        if item.is_terminal:
            del batch[index + 1 :]
            break
    return batch


def is_last_batch(batch):
    """Whether no batch follows ``batch`` (``read_batch()``'s): short, or terminal."""
    return len(batch) < get_config()["REPLAY_BATCH_SIZE"] or batch[-1].is_terminal


async def log_batches(execution_id, after, until=None, guard=None):
    """Yield the logged events after ``after`` (up to ``until``) in ``read_batch()``
    batches, each read in a short database session, ending at a terminal event.

    ``guard(read)``, when given, awaits each read for the caller (and may give it up).
    """
    while True:
        read = sessions.run("log", read_batch, execution_id, after, until)
        batch = await (read if guard is None else guard(read))
        if not batch:
            return
        yield batch
        if is_last_batch(batch):
            return
        after = batch[-1].seq
