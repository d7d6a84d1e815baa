"""The events of the log this process read lately, so that streams replaying the same
history (a reconnect storm after a deploy, many viewers of one execution) read it from the
database once, not once each.

Only events read from the database outside a transaction go in: committed ones, which
never change (an execution's log only grows, one sequence number after the other, until
the execution is deleted). A lookup answers a run of consecutive events and nothing
else; what it lacks is read from the database, which stays the source of truth.
"""

import threading
from collections import OrderedDict

from .conf import get_config

# About what an Item costs beyond its frame's bytes: the object, its bytes and str
# headers, its slot in a run.
ITEM_OVERHEAD = 200


def size_of(items):
    return sum(len(item.frame) for item in items) + ITEM_OVERHEAD * len(items)


class Run:
    """Consecutive events of one execution: ``items[i].seq == base + i``."""

    __slots__ = ("base", "items", "size")

    def __init__(self, items, size):
        self.base, self.items, self.size = items[0].seq, items, size

    @property
    def end(self):
        """The sequence number after the run's last event."""
        return self.base + len(self.items)


class LogCache:
    """Runs of logged events by execution, at most ``LOG_CACHE_BYTES`` in all; the
    executions read least recently go first. Thread-safe: the streams' database threads
    fill it and the event loop reads it."""

    def __init__(self):
        self.runs = OrderedDict()  # execution id -> its runs, disjoint, by base
        self.size = 0
        self.lock = threading.Lock()

    def get(self, execution_id, after, count):
        """Return the cached events of ``execution_id`` right after ``after``: consecutive,
        at most ``count``, perhaps none."""
        with self.lock:
            runs = self.runs.get(execution_id)
            if runs is None:
                return []
            self.runs.move_to_end(execution_id)
            for run in runs:
                if run.base <= after + 1 < run.end:
                    start = after + 1 - run.base
                    return run.items[start : start + count]
        return []

    def put(self, execution_id, items):
        """Keep ``items``, events of ``execution_id`` read from the log just now."""
        budget = get_config()["LOG_CACHE_BYTES"]
        if not items or items[-1].seq - items[0].seq != len(items) - 1:
            return  # nothing, or a hole in the log: every read of it goes to the database
        added = Run(items, size_of(items))
        if added.size > budget:
            return
        with self.lock:
            runs = self.runs.pop(execution_id, [])
            kept = []
            for run in runs:
                if run.end < added.base or run.base > added.end:
                    kept.append(run)
                else:
                    self.size -= run.size
                    added = merged(run, added)
            kept.append(added)
            kept.sort(key=lambda run: run.base)
            self.runs[execution_id] = kept
            self.size += added.size
            while self.size > budget:
                _, evicted = self.runs.popitem(last=False)
                self.size -= sum(run.size for run in evicted)

    def clear(self):
        with self.lock:
            self.runs.clear()
            self.size = 0


def merged(a, b):
    """Return one run of two that overlap or touch."""
    if b.base < a.base:
        a, b = b, a
    if b.end <= a.end:
        return a
    tail = b.items[a.end - b.base :]
    return Run(a.items + tail, a.size + size_of(tail))


LOG_CACHE = LogCache()
