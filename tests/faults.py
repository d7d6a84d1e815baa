"""Clients and probes for the fault tests: a raw-socket client of the event stream, a
follower that reconnects as a browser's ``EventSource`` does, the checks of what the
followers received against the log, and what PostgreSQL says about the processes.

    connections = await follow([server.port], execution_id, raw_key)
    assert_followed(execution_id, connections)

The clients need no thread and hold no Django state, so hundreds run on one event loop;
the checks read the log through the ORM, from sync code, once the clients are done.
"""

import asyncio
import json
import socket
import time
from collections import Counter

import psycopg
from django.conf import settings
from django.db import connection

from executions import slots
from executions.events import KEEPALIVE_FRAME, TERMINAL_EVENTS, frame, opening_frames
from executions.models import Event, Execution, NodeRun, Status
from tests.live_server import HOST, READ_TIMEOUT, database_url, events_url, frames_of

# The delay a follower waits before reconnecting; a browser waits the stream's retry:
# (3 s), which would only make the tests slower.
RECONNECT_DELAY = 0.05
# A follower that needs more connections than this is reconnecting in a loop.
MAX_CONNECTIONS = 50
# The read buffer of a client's stream reader, in bytes (asyncio's default is 64 KiB).
READ_LIMIT = 64 * 1024


class StreamConnection:
    """One GET of an execution's stream over a raw socket, HTTP/1.1 read by hand: the
    status, the de-chunked body, and whether the server ended the response (``ended``)
    or the connection was lost or refused first (``dropped``)."""

    def __init__(self, port, execution_id, raw_key, last_event_id=None):
        self.port, self.execution_id, self.last_event_id = port, execution_id, last_event_id
        headers = {"Host": f"{HOST}:{port}", "X-API-Key": raw_key, "Connection": "close"}
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        lines = [f"GET {events_url(execution_id)} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.status = None
        self.received = bytearray()  # the body so far
        self.ids = []  # the ids of the complete event frames in it, in order
        self.parsed = 0  # where in the body the next frame starts
        self.ended = False
        self.dropped = False
        self.opened_at = None  # when the response's head came (time.time())
        self.chunked = False
        self.reader = self.writer = None

    async def open(self, receive_buffer=None, read_limit=READ_LIMIT):
        """Connect, send the request and read the response's head (a body that is not a
        stream is read whole). ``receive_buffer`` sets the socket's ``SO_RCVBUF``, so a
        client that stops reading stops the server's writes sooner."""
        sock = socket.socket()
        sock.setblocking(False)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, self.port))
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=read_limit)
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            sock.close()
            self.dropped = True
            return self
        self.opened_at = time.time()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in filter(None, header_lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not self.chunked:
            try:
                length = int(headers.get("content-length", 0))
                self.received += await self.reader.readexactly(length)
                self.ended = True
            except (OSError, asyncio.IncompleteReadError):
                self.dropped = True
            self.close()
        return self

    @property
    def is_open(self):
        return self.status == 200 and not (self.ended or self.dropped)

    @property
    def body(self):
        return bytes(self.received)

    @property
    def last_id(self):
        return self.ids[-1] if self.ids else None

    def take_frames(self):
        """Note the id of each event frame that the body now holds complete."""
        end = self.received.rfind(b"\n\n")
        if end < self.parsed:
            return
        for each in bytes(self.received[self.parsed : end]).split(b"\n\n"):
            if each.startswith(b"id: "):
                self.ids.append(int(each[4 : each.index(b"\n")]))
        self.parsed = end + 2

    async def read_chunk(self):
        """Read one chunk of the body into ``body``; return False once the response or
        the connection has ended."""
        try:
            size_line = await self.reader.readline()
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";", 1)[0], 16)
            data = await self.reader.readexactly(size + 2)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            self.dropped = True
            self.close()
            return False
        if size == 0:
            self.ended = True
            self.close()
            return False
        self.received += memoryview(data)[:-2]
        self.take_frames()
        return True

    async def read(self, until=None, within=READ_TIMEOUT, may_end=False):
        """Read until ``until(self)`` holds or, without it, until the response or the
        connection ends; fail if it ends first (unless ``may_end``) or after ``within``
        seconds."""
        try:
            async with asyncio.timeout(within):
                while self.is_open and not (until is not None and until(self)):
                    await self.read_chunk()
            assert until is None or may_end or until(self), f"{self} ended first"
        except TimeoutError:
            raise AssertionError(
                f"Still reading after {within} s (Last-Event-ID {self.last_event_id}, "
                f"ids so far {self.ids[:3]}...{self.ids[-3:]})"
            ) from None
        return self

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __repr__(self):
        ids = self.ids
        span = f"{ids[0]}..{ids[-1]}" if ids else "none"
        how = "ended" if self.ended else "dropped" if self.dropped else "open"
        return f"<{self.status} after {self.last_event_id}: ids {span}, {how}>"


async def follow(
    ports,
    execution_id,
    raw_key,
    *,
    drops=(),
    last_event_id=None,
    connections=None,
    within=READ_TIMEOUT,
):
    """Read an execution's stream as a browser's ``EventSource`` does, and return every
    connection it made: after each end of a response or lost connection it reconnects
    with ``Last-Event-ID`` the last id it received, until the server answers ``204``;
    any other status than 200 or 204 stops it, as it stops ``EventSource``.

    Connection ``n`` goes to ``ports[n]`` (the last port for all after). ``drops`` are
    ``(events, rewind)`` pairs: the client closes its ``n``-th connection itself after
    ``events`` more events, and resumes from ``rewind(last id received)``. The
    connections are appended to ``connections`` as they are made, when it is given. It
    fails after ``within`` seconds.
    """
    connections = [] if connections is None else connections
    try:
        async with asyncio.timeout(within):
            while True:
                assert len(connections) < MAX_CONNECTIONS, connections
                index = len(connections)
                port = ports[min(index, len(ports) - 1)]
                current = StreamConnection(port, execution_id, raw_key, last_event_id)
                connections.append(current)
                await current.open()
                if current.status != 200 and not current.dropped:
                    return connections
                if index < len(drops):
                    events, rewind = drops[index]
                    await current.read(
                        until=lambda c, n=events: len(c.ids) >= n, within=within, may_end=True
                    )
                    current.close()
                    seen = current.last_id if current.ids else last_event_id
                    last_event_id = None if seen is None else rewind(seen)
                else:
                    await current.read(within=within)
                    if current.ids:
                        last_event_id = current.ids[-1]
                await asyncio.sleep(RECONNECT_DELAY)
    except TimeoutError:
        raise AssertionError(f"Still following after {within} s: {connections}") from None


class Follower:
    """``follow()`` in a task of its own, whose progress the test watches."""

    def __init__(self, ports, execution_id, raw_key, **kwargs):
        self.connections = []
        self.task = asyncio.ensure_future(
            follow(ports, execution_id, raw_key, connections=self.connections, **kwargs)
        )

    @property
    def last_id(self):
        """The last id it received, on whichever connection."""
        ids = [c.last_id for c in self.connections if c.ids]
        return ids[-1] if ids else None

    async def reach(self, seq, within=READ_TIMEOUT):
        """Wait until it has received event ``seq``."""
        try:
            async with asyncio.timeout(within):
                while (self.last_id or 0) < seq:
                    assert not self.task.done(), self.connections
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"Event {seq} not received in {within} s") from None

    async def finish(self):
        """Wait until it has followed the stream to its end; return its connections."""
        return await self.task


def logged_frames(execution_id):
    """The log of an execution as streams send it: ``frames[seq - 1]`` is event ``seq``."""
    rows = Event.objects.filter(execution_id=execution_id).order_by("seq")
    return [frame(e.seq, e.type, e.data) for e in rows.only("seq", "type", "data")]


def is_terminal(event_frame):
    return event_frame.split(b"\n", 2)[1].removeprefix(b"event: ").decode() in TERMINAL_EVENTS


def assert_connection(connection_, log):
    """Assert that one connection carried exactly what the contract promises after its
    ``Last-Event-ID``: the opening frames, then the logged events that follow it, in
    order, with none skipped or repeated (keepalives aside), as far as it read."""
    after = connection_.last_event_id or 0
    body = connection_.body
    opening = {opening_frames(connection_.execution_id, status) for status in Status.values}
    start = next((o for o in opening if body.startswith(o)), None)
    assert start is not None, f"No opening frames: {body[:300]!r}"
    keepalive = KEEPALIVE_FRAME[:-2]
    received = [f + b"\n\n" for f in frames_of(body[len(start) :]) if f != keepalive]
    expected = log[after : after + len(received)]
    assert received == expected, f"{connection_}: not the log after {after}"
    return received


def assert_followed(execution_id, connections, *, may_end_early=False, log=None):
    """Assert what a follower received: every connection carried the log after its
    ``Last-Event-ID`` exactly, the last stream ended with the terminal event, the
    reconnect after it was answered ``204``, and every event after the first connection's
    ``Last-Event-ID`` was received. A follower
    that always resumed from the last id it saw (no rewinds) received each event exactly
    once. Return the ids received, in order.

    Unless ``may_end_early``, the server never ended a stream before its terminal event.
    ``log`` is ``logged_frames(execution_id)``, when the caller has read it already.
    """
    log = logged_frames(execution_id) if log is None else log
    assert log and is_terminal(log[-1]), f"{execution_id} has not ended"
    *streams, last = connections
    assert last.status == 204, connections
    assert last.last_event_id == len(log), connections
    received_ids = []
    for index, each in enumerate(streams):
        if each.dropped and each.status is None:
            continue  # refused or reset before the response: EventSource tries again
        assert each.status == 200, (index, each, each.body[:300])
        received = assert_connection(each, log)
        after = each.last_event_id or 0
        received_ids += range(after + 1, after + 1 + len(received))
        if each.ended and not may_end_early:
            assert received and is_terminal(received[-1]), (index, connections)
    first = connections[0].last_event_id or 0
    assert set(received_ids) == set(range(first + 1, len(log) + 1)), connections
    assert is_terminal(log[received_ids[-1] - 1]), connections
    return received_ids


def assert_each_event_once(received_ids):
    """Assert that the ids a follower received are consecutive, each exactly once."""
    doubled = [seq for seq, times in Counter(received_ids).items() if times > 1]
    assert not doubled, f"received twice: {doubled[:10]}"
    first = received_ids[0] if received_ids else 1
    assert received_ids == list(range(first, first + len(received_ids)))


def assert_log_consistent(execution_id):
    """Assert that an execution's log and state agree, as one transaction per event
    leaves them: sequence numbers 1..last_seq without a gap, the status its last event
    says, and a node run for each node that started, finished as its events say."""
    execution = Execution.objects.get(pk=execution_id)
    events = list(Event.objects.filter(execution=execution).order_by("seq").values("seq", "type"))
    assert [e["seq"] for e in events] == list(range(1, execution.last_seq + 1)), execution.status
    types = [e["type"] for e in events]
    terminal = [t for t in types if t in TERMINAL_EVENTS]
    if terminal:
        assert terminal == [types[-1]], types
        assert execution.status == types[-1].removeprefix("execution:"), (execution.status, types)
    elif types:
        assert execution.status == Status.RUNNING, (execution.status, types)
    else:
        assert execution.status == Status.PENDING
    started = Counter()
    finished = {}
    for event in Event.objects.filter(execution=execution, type__startswith="node:"):
        node_id = json.loads(event.data)["node_id"]
        if event.type == "node:started":
            started[node_id] += 1
        else:
            finished[node_id] = event.type.removeprefix("node:")
    runs = {run.node_id: run.status for run in NodeRun.objects.filter(execution=execution)}
    assert set(runs) == set(started) and set(started.values()) <= {1}, (runs, started)
    for node_id, status in runs.items():
        if node_id in finished:
            assert status == finished[node_id], (node_id, status, finished[node_id])
        elif execution.status == Status.RUNNING:
            assert status == Status.RUNNING, (node_id, status)
        else:
            # An execution that ends early closes its running nodes without a node event.
            assert status == execution.status, (node_id, status, execution.status)
    return execution


def postgres():
    """A connection of the test's own to the test database, outside Django (autocommit)."""
    url = database_url().replace("postgres://", "postgresql://", 1)
    return psycopg.connect(url, autocommit=True)


def terminate_backends(pg):
    """Terminate every other backend on the test database (never on another database),
    as a PostgreSQL restart or a failover does; return how many.

    The test process's own Django connections are among them: the test calls
    ``reset_connections()`` before its next query.
    """
    rows = pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


def reset_connections():
    """Drop this thread's Django connection and the process's pool of them, which
    ``terminate_backends()`` broke: the next query connects afresh."""
    connection.close()
    connection.close_pool()


def backends_of(pg, application_name):
    """How many connections a process labelled ``PGAPPNAME=application_name`` holds on
    the test database now."""
    return pg.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = %s",
        [application_name],
    ).fetchone()[0]


def stream_slots(rate_limit_prefix, api_key, redis_url=None):
    """How many open streams count against ``api_key`` in Redis (the tests' own unless
    ``redis_url``), over every process (``executions.slots``), for servers run with that
    ``APIKEYS_RATE_LIMIT_KEY_PREFIX``."""
    store = slots.RedisStore(redis_url or settings.REDIS_URL, f"{rate_limit_prefix}:streams")
    return sum(int(held) for held in store.client.hvals(store.key(f"key:{api_key.pk}")))
