"""The producer API: record an execution's state changes and events from any process.

Every call writes its state change and its event row in one transaction, with the
execution's next sequence number, and sends the event to the execution's channel-layer
group only after that transaction commits. Sync methods have ``a``-prefixed async twins.

    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_report", total_nodes=2)
    recorder.start()
    with recorder.node("fetch", "http") as node:
        node.outputs = {"status": 200}
    with recorder.node("summarise", "ai_chat") as node:
        node.outputs = {"text": "..."}
    recorder.complete({"summary": "..."})
"""

import contextlib
import copy
import logging
import threading
import time
from functools import partial

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from apikeys.payloads import storable_text, unstorable
from apikeys.responses import format_timestamp

from . import events, messages, metrics
from .conf import get_config
from .log import Item
from .models import Event, Execution, NodeRun, Status
from .publisher import publish_all

logger = logging.getLogger(__name__)

# Seconds to wait before each new attempt at recording an execution's end when the
# database connection was lost: a pool may hand out several connections the database
# has dropped (each fails once), and a database that restarts takes a few seconds.
END_RETRY_DELAYS = (0, 0.5, 1, 2, 4)

# The largest value a PositiveIntegerField holds on every supported database.
MAX_TOTAL_NODES = 2_147_483_647
ID_LENGTH = 100  # workflow ids, node ids and node types


class UnstorableEvent(ValueError):
    """Raised, before anything is recorded, for a payload the log cannot hold."""


def check_storable(value, what):
    """Raise ``UnstorableEvent`` unless ``value`` can be stored as JSON and sent."""
    problem = unstorable(value)
    if problem:
        raise UnstorableEvent(f"{what} cannot be recorded: {problem}.")


def check_identifier(value, what):
    """Raise ``UnstorableEvent`` unless ``value`` is a storable string of at most 100."""
    if not isinstance(value, str) or not value or len(value) > ID_LENGTH:
        raise UnstorableEvent(f"{what} must be a string of 1 to {ID_LENGTH} characters.")
    check_storable(value, what)


def failure_text(error):
    """The message an error (an exception or a string) is recorded with, storable
    whatever it holds."""
    text = str(error)
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return storable_text(text)


class ExecutionFinished(Exception):
    """Raised when recording into an execution that already had its terminal event."""

    def __init__(self, execution):
        self.execution_id, self.status = execution.id, execution.status
        super().__init__(
            f"Execution {execution.id} is already {execution.status}; nothing more is recorded."
        )


def close_running_nodes(execution, status, now, error=None):
    """Finish the node runs an execution leaves running when it ends early."""
    for run in execution.nodes.filter(status=Status.RUNNING):
        run.status, run.completed_at, run.error = status, now, error
        run.duration_ms = round((now - run.started_at).total_seconds() * 1000)
        run.save(update_fields=["status", "completed_at", "error", "duration_ms"])


def encoded(event_type, execution_id, fields):
    """The event's data line, or ``UnstorableEvent`` when it is over ``MAX_EVENT_BYTES``."""
    data = events.encode_data(event_type, execution_id, fields)
    limit = get_config()["MAX_EVENT_BYTES"]
    if len(data) > limit:
        raise UnstorableEvent(
            f"The {event_type} event is {len(data)} bytes; the most is {limit} "
            "(EXECUTIONS['MAX_EVENT_BYTES'])."
        )
    return data


def can_record_in_one_statement():
    """Whether an event can be recorded by one statement committed on its own: outside a
    transaction, on PostgreSQL (whose UPDATE runs inside a WITH; SQLite's cannot)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def record_statement(execution, changed, last_seq, event_type, data):
    """The SQL and parameters of ``_record_in_one_statement()``: update the ``changed``
    fields of ``execution`` if its ``last_seq`` is still ``last_seq``, and insert the
    event only then."""
    quote = connection.ops.quote_name
    columns = {f.attname: f for f in Execution._meta.concrete_fields}
    assignments = ", ".join(f"{quote(columns[name].column)} = %s" for name in changed)
    values = [
        columns[name].get_db_prep_save(getattr(execution, name), connection) for name in changed
    ]
    sql = (
        f"WITH locked AS (UPDATE {quote(Execution._meta.db_table)} SET {assignments} "  # noqa: S608 (the models' own names)
        "WHERE id = %s AND last_seq = %s RETURNING id) "
        f"INSERT INTO {quote(Event._meta.db_table)} (execution_id, seq, type, data, created_at) "
        "SELECT id, %s, %s, %s, %s FROM locked"
    )
    params = [*values, execution.pk, last_seq, execution.last_seq, event_type, data, timezone.now()]
    return sql, params


def committed(msgs):
    """Count the events just committed, and send them."""
    for msg in msgs:
        for event_type in messages.event_types(msg):
            metrics.EVENTS_RECORDED.labels(event_type).inc()
    publish_all(msgs)


EXECUTION_FIELDS = [
    field.attname for field in Execution._meta.concrete_fields if not field.primary_key
]


class _Batch:
    """The locked execution and the events a ``batch()`` has recorded so far."""

    __slots__ = ("events", "execution", "items", "loaded")

    def __init__(self, execution, reserved):
        self.execution, self.events, self.items = execution, [], []
        # The row as the database holds it: last_seq already counts the reserved events.
        self.loaded = {field: getattr(execution, field) for field in EXECUTION_FIELDS}
        self.loaded["last_seq"] += reserved

    def save_execution(self):
        """Write the fields of the execution that the batch changed, and only those: a
        progress event changes last_seq alone."""
        changed = [f for f in EXECUTION_FIELDS if getattr(self.execution, f) != self.loaded[f]]
        if changed:
            self.execution.save(update_fields=changed)


class NodeRecorder:
    """Handle of a running node: set ``outputs`` before the ``with`` block ends."""

    def __init__(self, node_id, node_type):
        self.node_id, self.node_type = node_id, node_type
        self.outputs = None


class ExecutionRecorder:
    """Record the life of one execution. Safe to use from several processes at once."""

    def __init__(self, execution_id):
        self.execution_id = getattr(execution_id, "pk", execution_id)
        self._local = threading.local()  # the batch() this thread is recording into
        # The last node this recorder saw fail, for the execution:failed that may follow.
        self.failed_node_id = None

    @classmethod
    def create(cls, *, owner, workflow_id, inputs=None, mode="live", total_nodes=None):
        """Create a pending execution (no event yet) and return its recorder."""
        check_identifier(workflow_id, "The workflow id")
        check_storable(inputs or {}, "The inputs")
        if total_nodes is not None and not 0 <= total_nodes <= MAX_TOTAL_NODES:
            raise UnstorableEvent(f"total_nodes must be between 0 and {MAX_TOTAL_NODES}.")
        execution = Execution.objects.create(
            owner=owner,
            workflow_id=workflow_id,
            inputs=inputs or {},
            mode=mode,
            total_nodes=total_nodes,
        )
        return cls(execution.pk)

    @classmethod
    async def acreate(cls, **kwargs):
        return await sync_to_async(cls.create)(**kwargs)

    @property
    def execution(self):
        """Return the execution as it is now in the database (inside ``batch()``, as the
        batch has changed it so far)."""
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            return batch.execution
        return Execution.objects.get(pk=self.execution_id)

    def _record(self, event_type, change, execution_only=False):
        """Apply ``change(execution, now)`` and append its event, atomically.

        ``change`` mutates the locked execution (and any node run) and returns the event's
        fields. The event is sent to the channel layer once the outermost transaction
        commits, so no stream ever sees an event that was rolled back. A ``change`` that
        touches the execution alone (``execution_only``) is recorded in one statement when
        it can be (``_record_in_one_statement()``).
        """
        if execution_only and can_record_in_one_statement():
            execution = self._record_in_one_statement(event_type, change)
            if execution is not None:
                return execution
        with self.batch(reserve=1) as batch:
            execution = batch.execution
            if execution.is_finished:
                raise ExecutionFinished(execution)
            now = timezone.now()
            fields = change(execution, now)
            execution.last_seq += 1
            seq = execution.last_seq
            data = encoded(event_type, execution.pk, fields)
            batch.events.append(Event(execution=execution, seq=seq, type=event_type, data=data))
            batch.items.append(Item(seq, event_type, events.frame(seq, event_type, data)))
        # Committed (unless inside the caller's transaction): what the next event starts from.
        self._local.known = None if connection.in_atomic_block else execution
        return execution

    def _record_in_one_statement(self, event_type, change):
        """Record an event that changes the execution alone in one statement, committed
        on its own: the UPDATE of the fields ``change`` set and the event's INSERT, on
        the condition that the execution's ``last_seq`` is still the one this thread last
        recorded. Return the execution, or None when that is not known or no longer
        holds (another producer recorded since): the caller locks the row instead.

        One round trip where a transaction takes four (BEGIN, lock, INSERT, COMMIT).
        """
        known = getattr(self._local, "known", None)
        if known is None or known.is_finished:
            return None
        execution = copy.copy(known)
        loaded = {field: getattr(execution, field) for field in EXECUTION_FIELDS}
        now = timezone.now()
        fields = change(execution, now)
        execution.last_seq += 1
        seq = execution.last_seq
        data = encoded(event_type, execution.pk, fields)
        changed = [f for f in EXECUTION_FIELDS if getattr(execution, f) != loaded[f]]
        with connection.cursor() as cursor:
            cursor.execute(
                *record_statement(execution, changed, loaded["last_seq"], event_type, data)
            )
            recorded = cursor.rowcount == 1
        self._local.known = execution if recorded else None
        if not recorded:
            return None
        committed(
            messages.build(
                execution.pk, [Item(seq, event_type, events.frame(seq, event_type, data))]
            )
        )
        return execution

    def _record_end(self, event_type, change):
        """``_record()`` for an event that ends the execution, again on a new connection
        when the database connection was lost, so that a lost connection does not leave
        the execution running forever, its streams open.

        A retry cannot record a second end: if the lost attempt did commit, the next one
        raises ``ExecutionFinished``. Inside a transaction (a ``batch()`` included)
        nothing is retried: the caller's transaction is lost with its connection.
        """
        for delay in END_RETRY_DELAYS:
            try:
                return self._record(event_type, change)
            except (OperationalError, InterfaceError) as exc:
                if connection.in_atomic_block:
                    raise
                logger.warning(
                    "Recording %s of %s failed (%r); retrying on a new connection.",
                    event_type,
                    self.execution_id,
                    exc,
                )
                connection.close()  # back to its pool, which drops a broken connection
                time.sleep(delay)
        return self._record(event_type, change)

    @contextlib.contextmanager
    def batch(self, reserve=0):
        """Record the events of the ``with`` block in one transaction: the execution is
        locked once, its events are inserted together at the end of the block and sent
        after the commit. For producers that emit many small events at once; an error in
        the block records none of them.

            with recorder.batch():
                for chunk in chunks:
                    recorder.progress(completed_nodes=chunk.index, total_nodes=len(chunks))
        """
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            yield batch
            return
        with transaction.atomic():
            batch = self._local.batch = _Batch(self._lock(reserve), reserve)
            try:
                yield batch
            finally:
                self._local.batch = None
            if batch.events:
                batch.save_execution()
                Event.objects.bulk_create(batch.events)
                msgs = messages.build(batch.execution.pk, batch.items)
                transaction.on_commit(partial(committed, msgs))

    def _lock(self, reserve):
        """Lock the execution's row and return it, in one statement: an UPDATE that adds
        ``reserve`` to ``last_seq`` (the sequence numbers of the events about to be
        recorded: one when a single event is, so its transaction needs no more UPDATE for
        it) and returns the row as it was before."""
        table = connection.ops.quote_name(Execution._meta.db_table)
        rows = list(
            Execution.objects.raw(
                f"UPDATE {table} SET last_seq = last_seq + %s WHERE id = %s RETURNING *",  # noqa: S608 (the table's own name)
                [reserve, self.execution_id],
            )
        )
        if not rows:
            raise Execution.DoesNotExist(f"No execution {self.execution_id!r}.")
        execution = rows[0]
        execution.last_seq -= reserve
        return execution

    def start(self):
        """Move the execution from pending to running: ``execution:started``."""

        def change(execution, now):
            if execution.status != Status.PENDING:
                raise ValueError(f"Execution {execution.pk} has already started.")
            execution.status, execution.started_at = Status.RUNNING, now
            return {"workflow_id": execution.workflow_id, "started_at": format_timestamp(now)}

        return self._record(events.EXECUTION_STARTED, change)

    def progress(self, *, completed_nodes, total_nodes=None, current_node=None, progress=None):
        """Record ``execution:progress``; ``progress`` defaults to the completed share."""

        def change(execution, now):
            total = total_nodes if total_nodes is not None else execution.total_nodes
            if total_nodes is not None:
                execution.total_nodes = total_nodes
            percent = progress
            if percent is None:
                percent = round(100 * completed_nodes / total) if total else 0
            return {
                "progress": max(0, min(100, percent)),
                "current_node": current_node,
                "completed_nodes": completed_nodes,
                "total_nodes": total,
            }

        return self._record(events.EXECUTION_PROGRESS, change, execution_only=True)

    def start_node(self, node_id, node_type):
        """Record ``node:started`` (``node()`` is the usual way in)."""
        check_identifier(node_id, "A node id")
        check_identifier(node_type, "A node type")

        def change(execution, now):
            if execution.status != Status.RUNNING:
                raise ValueError(f"Execution {execution.pk} is {execution.status}, not running.")
            NodeRun.objects.create(
                execution=execution, node_id=node_id, node_type=node_type, started_at=now
            )
            return {"node_id": node_id, "node_type": node_type, "started_at": format_timestamp(now)}

        return self._record(events.NODE_STARTED, change)

    def _finish_node(self, node_id, status, outputs=None, error=None):
        def change(execution, now):
            run = NodeRun.objects.select_for_update().get(execution=execution, node_id=node_id)
            run.status, run.completed_at = status, now
            run.outputs, run.error = outputs, error
            run.duration_ms = round((now - run.started_at).total_seconds() * 1000)
            run.save()
            fields = {"node_id": node_id, "node_type": run.node_type}
            if status == Status.COMPLETED:
                return {
                    **fields,
                    "outputs": outputs,
                    "duration_ms": run.duration_ms,
                    "completed_at": format_timestamp(now),
                }
            return {
                **fields,
                "error": error,
                "duration_ms": run.duration_ms,
                "failed_at": format_timestamp(now),
            }

        event_type = events.NODE_COMPLETED if status == Status.COMPLETED else events.NODE_FAILED
        return self._record(event_type, change)

    def complete_node(self, node_id, outputs=None):
        """Record ``node:completed`` and, when the total is known, ``execution:progress``."""
        check_storable(outputs, f"The outputs of node {node_id!r}")
        self._finish_node(node_id, Status.COMPLETED, outputs=outputs)
        execution = self.execution
        if execution.total_nodes:
            completed = execution.nodes.filter(status=Status.COMPLETED).count()
            self.progress(completed_nodes=completed, current_node=node_id)

    def fail_node(self, node_id, error):
        """Record ``node:failed`` with the error message."""
        self.failed_node_id = node_id
        return self._finish_node(node_id, Status.FAILED, error=failure_text(error))

    @contextlib.contextmanager
    def node(self, node_id, node_type):
        """Record a node around a block: started on entry, then completed with the handle's
        ``outputs``, or failed with the exception's message (which propagates)."""
        self.start_node(node_id, node_type)
        handle = NodeRecorder(node_id, node_type)
        try:
            yield handle
        except Exception as exc:
            self.fail_node(node_id, exc)
            raise
        self.complete_node(node_id, handle.outputs)

    def complete(self, outputs=None):
        """Finish the execution successfully: ``execution:completed``."""
        check_storable(outputs, "The execution's outputs")

        def change(execution, now):
            execution.status, execution.completed_at = Status.COMPLETED, now
            execution.outputs = outputs
            return {
                "status": Status.COMPLETED,
                "outputs": outputs,
                "duration_ms": execution.duration_ms,
                "completed_at": format_timestamp(now),
            }

        return self._record_end(events.EXECUTION_COMPLETED, change)

    def fail(self, error, node_id=None):
        """Finish the execution as failed: ``execution:failed``."""

        def change(execution, now):
            execution.status, execution.completed_at = Status.FAILED, now
            execution.error = failure_text(error)
            close_running_nodes(execution, Status.FAILED, now, error=execution.error)
            return {
                "status": Status.FAILED,
                "error": execution.error,
                "node_id": node_id,
                "completed_at": format_timestamp(now),
            }

        return self._record_end(events.EXECUTION_FAILED, change)

    def cancel(self):
        """Cancel a pending or running execution: ``execution:cancelled``."""

        def change(execution, now):
            execution.status, execution.completed_at = Status.CANCELLED, now
            close_running_nodes(execution, Status.CANCELLED, now)
            return {"status": Status.CANCELLED, "cancelled_at": format_timestamp(now)}

        return self._record_end(events.EXECUTION_CANCELLED, change)

    # Async twins: the same transactions, run off the event loop.
    async def astart(self):
        return await sync_to_async(self.start)()

    async def aprogress(self, **kwargs):
        return await sync_to_async(self.progress)(**kwargs)

    async def astart_node(self, node_id, node_type):
        return await sync_to_async(self.start_node)(node_id, node_type)

    async def acomplete_node(self, node_id, outputs=None):
        return await sync_to_async(self.complete_node)(node_id, outputs)

    async def afail_node(self, node_id, error):
        return await sync_to_async(self.fail_node)(node_id, error)

    @contextlib.asynccontextmanager
    async def anode(self, node_id, node_type):
        await self.astart_node(node_id, node_type)
        handle = NodeRecorder(node_id, node_type)
        try:
            yield handle
        except Exception as exc:
            await self.afail_node(node_id, exc)
            raise
        await self.acomplete_node(node_id, handle.outputs)

    async def acomplete(self, outputs=None):
        return await sync_to_async(self.complete)(outputs)

    async def afail(self, error, node_id=None):
        return await sync_to_async(self.fail)(error, node_id)

    async def acancel(self):
        return await sync_to_async(self.cancel)()
