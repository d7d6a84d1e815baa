"""Load benchmark of the SSE event stream (``GET /api/v1/executions/:id/events``).

Sets up its own PostgreSQL database ``bench`` and Redis DB 5, starts ONE server process
(daphne or uvicorn), opens N streams on one running execution from a lean asyncio
client in this process, and then either

* (default) has a producer subprocess (``bench/producer.py``) record events at
  ``--rate`` per second for ``--duration`` seconds and measures delivery lag, loss,
  duplicates and early ends; or
* (``--idle``) holds the streams open with no events and measures the server's memory
  per stream, its threads and the PostgreSQL connections it holds.

Delivery lag is the time this client parsed a frame minus the event's
``Event.created_at`` read from the database afterwards (same machine clock).

The client opens each stream with ``loop.create_connection`` and an ``asyncio.Protocol``
(one callback per socket read, no coroutine per read), so at 50,000 frames/s it takes a
fraction of a core from the server it shares the machine with.

Diagnostics: ``--py-spy OUT`` profiles the server while events flow, ``--tracemalloc``
(idle mode) lists where the per-stream Python memory is allocated, ``--settings`` and
``--app`` compare configurations or the bare-ASGI floor (``bench.bare_sse:application``).

    .venv/bin/python bench/stream_load.py --server daphne
    .venv/bin/python bench/stream_load.py --server uvicorn --idle

``--workers N`` (uvicorn) serves the streams from N processes behind one port.

Traffic goes to 127.0.0.1 only; every phase is bounded in time; exits 2 when setup fails
and 1 when a stream lost, doubled or reordered an event or did not end with its terminal
one. The other modes (``open_rate.py``, ``storm.py``, ``rest_load.py``, ``record_rate.py``,
``late_join.py``) import their setup, server, client and report helpers from here.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DATABASE_NAME = "bench"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DATABASE_NAME}"
ADMIN_DSN = f"postgresql://postgres@{HOST}:5432/postgres"
REDIS_URL = f"redis://{HOST}:6379/5"
# The servers' PostgreSQL connections carry this name (libpq's PGAPPNAME), so that
# pg_stat_activity tells them from the producer's and the benchmark's own.
SERVER_APPLICATION_NAME = "bench-server"


def python_path(root):
    """The servers' and the producer's PYTHONPATH: the checkout ``root``, then the caller's."""
    return os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))


BENCH_ENV = {
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": REDIS_URL,
    # The demo site's, but for the per-key limit of open streams (bench/settings.py).
    "DJANGO_SETTINGS_MODULE": "bench.settings",
    # Production-like: DEBUG off (no per-connection query log), warnings only.
    "DEBUG": "0",
    "LOG_LEVEL": "WARNING",
    "SECRET_KEY": "bench-" + "x" * 50,
    "PYTHONPATH": python_path(ROOT),
}
TERMINAL_EVENTS = (b"event: execution:completed", b"event: execution:failed")
TERMINAL_EVENTS += (b"event: execution:cancelled",)
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


class SetupError(Exception):
    """The benchmark could not set up its database, key, execution or server."""


# The load client: one asyncio Protocol per stream, parsing HTTP/1.1 by hand.


class Stream(asyncio.Protocol):
    """One SSE connection: sends the GET, de-chunks the body, records ``(id, time)``."""

    def __init__(self, request, after=None):
        loop = asyncio.get_running_loop()
        self.request = request
        self.after = after  # the Last-Event-ID it sent
        self.transport = None
        self.connected = loop.create_future()  # its time, or None if the stream failed first
        self.replayed = loop.create_future()  # set at the first event with an id
        self.done = loop.create_future()  # set when the response or connection ends
        self.raw = bytearray()
        self.sse = bytearray()
        self.status = None
        self.headers_done = False
        self.chunked = False
        self.chunk_left = 0
        self.skip = 0
        self.ids = array("q")
        self.times = array("d")
        self.keepalives = 0
        self.terminal = False
        self.error = None
        self.sent_at = self.first_byte = None  # when the request went out, the answer came

    def connection_made(self, transport):
        self.transport = transport
        self.sent_at = time.time()
        transport.write(self.request)

    def data_received(self, data):
        now = time.time()
        if self.first_byte is None:
            self.first_byte = now
        if not self.headers_done:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).decode("latin-1").split("\r\n")
            data = bytes(self.raw[end + 4 :])
            self.raw.clear()
            self.headers_done = True
            self.status = int(head[0].split(" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            if self.status != 200:
                self.finish(f"HTTP {self.status}")
                return
        if self.chunked:
            self.dechunk(data, now)
        else:
            self.parse(data, now)

    def dechunk(self, data, now):
        raw = self.raw
        raw += data
        while raw:
            if self.chunk_left:
                piece = bytes(raw[: self.chunk_left])
                del raw[: len(piece)]
                self.chunk_left -= len(piece)
                if not self.chunk_left:
                    self.skip = 2  # the CRLF after the chunk's data
                self.parse(piece, now)
            elif self.skip:
                taken = min(self.skip, len(raw))
                del raw[:taken]
                self.skip -= taken
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(raw[:end]).split(b";", 1)[0], 16)
                del raw[: end + 2]
                if size == 0:  # the last chunk: the server ended the response
                    self.finish()
                    return
                self.chunk_left = size

    def parse(self, data, now):
        sse = self.sse
        sse += data
        end = sse.rfind(b"\n\n")
        if end < 0:
            return
        frames = bytes(sse[:end]).split(b"\n\n")
        del sse[: end + 2]
        for frame in frames:
            if frame.startswith(b"id: "):
                newline = frame.find(b"\n")
                self.ids.append(int(frame[4:newline]))
                self.times.append(now)
                if not self.replayed.done():
                    self.replayed.set_result(now)
                if frame.startswith(TERMINAL_EVENTS, newline + 1):
                    self.terminal = True
            elif frame.startswith(b": keepalive"):
                self.keepalives += 1
            elif b"event: connected" in frame and not self.connected.done():
                self.connected.set_result(now)

    def finish(self, error=None):
        if error and self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        self.finish(repr(exc) if exc else None)
        for future in (self.connected, self.replayed):
            if not future.done():
                future.set_result(None)

    @property
    def is_connected(self):
        return self.connected.done() and self.connected.result() is not None

    @property
    def ended_early(self):
        return self.done.done() and not self.terminal


def stream_request(port, path, key, last_event_id=None):
    resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-API-Key: {key}\r\n{resume}"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()


async def open_streams(
    port, path, key, count, concurrency, patience, last_event_ids=None, pace=0.0
):
    """Open ``count`` streams, at most ``concurrency`` waiting for `connected` at once;
    stream ``i`` resumes after ``last_event_ids[i]`` if given; ``pace``: at most that many
    new streams per second (0: as fast as the server takes them)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    if last_event_ids is None:
        last_event_ids = itertools.repeat(None, count)
    streams = []
    failures = []

    async def one(index, after):
        if pace:
            await asyncio.sleep(max(started + index / pace - time.monotonic(), 0))
        request = stream_request(port, path, key, after)
        async with gate:
            try:
                _, stream = await loop.create_connection(lambda: Stream(request, after), HOST, port)
                streams.append(stream)
                await asyncio.wait_for(asyncio.shield(stream.connected), patience)
                if not stream.is_connected:
                    failures.append(stream.error or "closed before `connected`")
            except (OSError, TimeoutError) as exc:
                failures.append(repr(exc))

    started = time.monotonic()
    await asyncio.gather(*(one(index, after) for index, after in enumerate(last_event_ids)))
    return streams, failures, time.monotonic() - started


async def resume(chain, port, path, key, patience, limit=50):
    """Follow the stream ``chain[-1]`` as EventSource does (but at once, without the
    ``retry:`` delay): each time the server ends it before its terminal event, reconnect
    with the last id received (waiting ``patience`` seconds for ``connected``), appending
    the new stream to ``chain``. Unbounded in time: the caller bounds it."""
    while len(chain) < limit:
        last = chain[-1]
        await last.done
        if last.terminal or not last.is_connected:
            return
        after = last.ids[-1] if last.ids else last.after
        opened, failures, _ = await open_streams(port, path, key, 1, 1, patience, [after])
        chain.extend(opened)
        if failures or not opened:
            return


def joined(chain):
    """What a chain of reconnected streams received, as one stream."""
    ids, times = array("q"), array("d")
    for stream in chain:
        ids.extend(stream.ids)
        times.extend(stream.times)
    first, last = chain[0], chain[-1]
    return SimpleNamespace(
        after=first.after,
        ids=ids,
        times=times,
        connected=first.connected,
        is_connected=all(stream.is_connected for stream in chain),
        terminal=last.terminal,
        done=last.done,
        error=last.error,
    )


async def http_status(port, path, key, patience=5.0):
    """Return the status code of one GET, or None when the server does not answer."""
    writer = None
    try:
        async with asyncio.timeout(patience):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(stream_request(port, path, key))
            return int((await reader.readline()).split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        if writer is not None:
            writer.close()


# The server process and what /proc says about it.


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(server, port, app, workers=1):
    if server == "daphne":
        # The endpoint string only raises Twisted's listen backlog (default 50) to
        # uvicorn's 2048, so a connect burst is not throttled by SYN retries.
        endpoint = f"tcp:port={port}:interface={HOST}:backlog=2048"
        return [sys.executable, "-m", "daphne", "-e", endpoint, "-v", "0", app]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--log-level",
        "warning",
        "--no-access-log",
        *(["--workers", str(workers)] if workers > 1 else []),
    ]


def proc_status(pids):
    """Return the RSS in KiB and the thread count of the server's processes, summed."""
    rss = threads = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        threads += len(os.listdir(f"/proc/{pid}/task"))
    return rss, threads


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def child_pids(pid):
    """Return the pids of the processes whose parent is ``pid``."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
    return children


def connections_by_pid(pids, port):
    """Return ``{pid: established connections on port}`` for each of ``pids``: how a
    multi-process server shares the streams."""
    suffix = f":{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        links = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"{fd_dir}/{fd}"))
        counts[pid] = sum(1 for link in links if link in inodes)
    return counts


def socket_backlogs(port):
    """Return the bytes queued in the kernel on the server's connections: written by the
    server but not yet read by the client, summed (``tx_queue`` plus ``rx_queue`` of the
    client's sockets); a large figure means the client, not the server, is behind."""
    suffix = f":{port:04X}"
    queued = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[2].endswith(suffix) or fields[1].endswith(suffix):
                tx, rx = fields[4].split(":")
                queued += int(tx, 16) + int(rx, 16)
    return queued


def proc_cpu_seconds(pid, tid=None):
    """Return the CPU seconds of a process (all threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu_seconds(server):
    """Return the CPU seconds of the server's processes, and of their event-loop threads."""
    pids = server.pids()
    total = sum(proc_cpu_seconds(pid) for pid in pids)
    return total, sum(proc_cpu_seconds(pid, pid) for pid in server.worker_pids())


def machine_busy_ticks():
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cpu_by_process():
    """Return ``{pid: (command name, CPU seconds)}`` of every process visible."""
    usage = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        usage[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return usage


def top_consumers(before, after, seconds, exclude, count=4):
    """Return ``"name pid: cores"`` of the busiest processes between two snapshots."""
    deltas = [
        (cpu - before.get(pid, (name, 0.0))[1], name, pid)
        for pid, (name, cpu) in after.items()
        if pid not in exclude
    ]
    deltas.sort(reverse=True)
    return ", ".join(
        f"{name} {pid}: {delta / seconds:.2f}"
        for delta, name, pid in deltas[:count]
        if delta / seconds >= 0.005
    )


def machine_load(window=3.0):
    """Return the machine's busy share over the next ``window`` seconds, its load average
    (1 minute) and its busiest processes then."""
    processes0 = cpu_by_process()
    busy0, total0 = machine_busy_ticks()
    time.sleep(window)
    busy1, total1 = machine_busy_ticks()
    return {
        "busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "loadavg": round(os.getloadavg()[0], 2),
        "others": top_consumers(processes0, cpu_by_process(), window, {os.getpid()}),
    }


def wait_for_quiet_machine(patience, busy_limit=0.2, window=3.0):
    """Wait (at most ``patience`` seconds) until the machine is under ``busy_limit``
    busy over ``window`` seconds; return the last ``machine_load()`` seen."""
    deadline = time.monotonic() + patience
    while True:
        load = machine_load(window)
        if load["busy"] < busy_limit or time.monotonic() >= deadline:
            return load


def client_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sampler:
    """Sample the server's RSS, threads and PostgreSQL connections every ``interval``
    seconds, and (``queues``) the bytes queued in its sockets."""

    def __init__(self, server, interval=1.0, queues=True):
        self.server, self.interval, self.queues = server, interval, queues
        self.peak_rss = self.peak_threads = self.peak_pg = self.peak_kernel_queue = 0
        self.pg = None
        self.task = None

    async def start(self):
        import psycopg

        self.pg = await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True)
        self.task = asyncio.create_task(self.run())

    async def pg_connections(self):
        """The server's connections only (they carry its ``application_name``)."""
        cursor = await self.pg.execute(
            "select count(*) from pg_stat_activity where datname = %s and application_name = %s",
            (DATABASE_NAME, SERVER_APPLICATION_NAME),
        )
        return (await cursor.fetchone())[0]

    async def sample(self):
        rss, threads = proc_status(self.server.pids())
        pg = await self.pg_connections()
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, threads)
        self.peak_pg = max(self.peak_pg, pg)
        if self.queues:
            self.peak_kernel_queue = max(self.peak_kernel_queue, socket_backlogs(self.server.port))
        return rss, threads, pg

    async def run(self):
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.pg is not None:
            await self.pg.close()


# Setup: database, Redis, migrations, user, key, execution.


def raise_fd_limit(streams):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A limit per process: this one holds the client's ends, the server (which inherits
    # the limit) the other ends.
    wanted = streams + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise SetupError(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} needed.")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def prepare_stores():
    import psycopg
    import redis

    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{DATABASE_NAME}"')
        # Redis DB 5 belongs to the benchmark: start without stale groups or counters.
        redis.Redis.from_url(REDIS_URL).flushdb()
    except (psycopg.Error, redis.RedisError) as exc:
        raise SetupError(f"PostgreSQL or Redis unavailable: {exc}") from exc
    migrate()


def migrate():
    """Run ``manage.py migrate`` on the benchmark's database (``BENCH_ENV``)."""
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, **BENCH_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode:
        raise SetupError(f"migrate failed:\n{done.stderr[-2000:]}")


def create_fixtures(username="bench"):
    """Return ``(raw_key, recorder)`` for a new key of user ``username`` and a new running
    execution of that user."""
    sys.path.insert(0, str(ROOT))
    os.environ.update(BENCH_ENV)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections

    from apikeys.models import APIKey

    user, _ = get_user_model().objects.get_or_create(username=username)
    _, raw_key = APIKey.objects.create_key(
        owner=user,
        name=f"stream_load {time.strftime('%Y-%m-%d %H:%M:%S')}",
        scopes=["executions:read"],
        rate_limit_per_minute=100_000_000,
        rate_limit_per_day=1_000_000_000,
    )
    connections.close_all()
    return raw_key, running_execution(username)


def running_execution(username="bench", total_nodes=None):
    """Return the recorder of a new running execution of ``username`` (after
    ``create_fixtures()``, which sets Django up)."""
    from django.contrib.auth import get_user_model
    from django.db import connections

    from executions.recorder import ExecutionRecorder

    user = get_user_model().objects.get(username=username)
    recorder = ExecutionRecorder.create(
        owner=user, workflow_id="wf_bench_stream_load", total_nodes=total_nodes
    )
    recorder.start()
    connections.close_all()
    return recorder


def record_history(recorder, events, batch_size=500):
    """Record ``events`` ``execution:progress`` events into a running execution, in
    ``recorder.batch()`` transactions of ``batch_size``; return its last sequence number."""
    from django.db import connections

    from executions import publisher

    for first in range(0, events, batch_size):
        with recorder.batch():
            for index in range(first, min(first + batch_size, events)):
                recorder.progress(completed_nodes=index + 1, total_nodes=events)
    publisher.flush()
    last_seq = recorder.execution.last_seq
    connections.close_all()
    return last_seq


def event_times(execution_id):
    """Return ``{seq: created_at as Unix time}`` of the execution's logged events."""
    from django.db import connections

    from executions.models import Event

    rows = Event.objects.filter(execution_id=execution_id).values_list("seq", "created_at")
    times = {seq: created.timestamp() for seq, created in rows}
    connections.close_all()
    return times


def check_log(execution_id):
    """Return an execution's ``last_seq`` and what is wrong with its log (nothing if it
    holds the events 1 to ``last_seq``, each once)."""
    from django.db import connections
    from django.db.models import Count, Max, Min

    from executions.models import Event, Execution

    last_seq = Execution.objects.values_list("last_seq", flat=True).get(pk=execution_id)
    found = Event.objects.filter(execution_id=execution_id).aggregate(
        rows=Count("seq"), distinct=Count("seq", distinct=True), low=Min("seq"), high=Max("seq")
    )
    connections.close_all()
    if tuple(found.values()) == (last_seq, last_seq, 1, last_seq):
        return last_seq, []
    return last_seq, [f"the log of {execution_id} holds {found}, its last_seq is {last_seq}"]


def complete_execution(recorder):
    from django.db import connections

    try:
        recorder.complete({"bench": "idle"})
    finally:
        connections.close_all()


# The two modes.


class Server:
    """One server process (uvicorn with ``workers`` > 1: a supervisor and its workers)."""

    def __init__(self, name, app, port, log_path, tracemalloc_dir=None, workers=1, root=ROOT):
        self.name, self.app, self.port, self.log_path = name, app, port, log_path
        self.tracemalloc_dir = tracemalloc_dir
        self.workers = workers
        self.root = Path(root)  # the checkout it serves
        self.snapshots = 0
        self.process = None

    @classmethod
    def for_bench(
        cls, name, app="flowmaestro.asgi:application", workers=1, label="bench", root=ROOT
    ):
        """A server on a free port, logging to a temporary file named after ``label``."""
        port = free_port()
        log_path = Path(tempfile.gettempdir()) / f"{label}_{name}_{port}.log"
        return cls(name, app, port, log_path, workers=workers, root=root)

    def spawn(self):
        env = {**os.environ, **BENCH_ENV, "PGAPPNAME": SERVER_APPLICATION_NAME}
        env["PYTHONPATH"] = python_path(self.root)
        if self.tracemalloc_dir:
            # bench/tracemalloc_hook/sitecustomize.py traces and dumps on SIGUSR1.
            hook = ROOT / "bench" / "tracemalloc_hook"
            env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
            env["BENCH_TRACEMALLOC_DIR"] = self.tracemalloc_dir
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                server_command(self.name, self.port, self.app, self.workers),
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, probe_path, key, patience=60.0):
        """Return once the server answers (404 for an unknown execution)."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if await http_status(self.port, probe_path, key) == 404:
                return
            await asyncio.sleep(0.2)
        self.stop()
        raise SetupError(f"{self.name} did not start; its log:\n{self.log_tail()}")

    @property
    def pid(self):
        return self.process.pid

    def worker_pids(self):
        """The processes that serve requests: the server, or its workers."""
        if self.workers == 1:
            return [self.pid]
        return [pid for pid in child_pids(self.pid) if b"spawn_main" in cmdline(pid)]

    def pids(self):
        """All the server's processes (its supervisor, its workers)."""
        return [self.pid] if self.workers == 1 else [self.pid, *self.worker_pids()]

    async def start(self, key, patience=60.0):
        """Spawn the server and return once it answers (and, with workers, all run)."""
        self.spawn()
        probe = f"/api/v1/executions/exec_missing{secrets.token_hex(4)}/events"
        await self.wait_ready(probe, key, patience)
        for _ in range(int(patience / 0.2)):
            if len(self.worker_pids()) >= self.workers:
                break
            await asyncio.sleep(0.2)
        if self.workers > 1:
            for _ in range(4 * self.workers):  # let every worker answer once
                await http_status(self.port, probe, key)

    async def snapshot(self, patience=300.0):
        """Have a tracing server dump its allocations; return the snapshot's path."""
        if not self.tracemalloc_dir:
            return None
        path = Path(self.tracemalloc_dir) / f"{self.snapshots}.snapshot"
        self.snapshots += 1
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if await asyncio.to_thread(path.exists):
                return path
            await asyncio.sleep(0.5)
        return None

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines=20):
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def close_streams(streams):
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()
    await asyncio.sleep(0.5)


async def wait_replayed(streams, patience):
    """Wait until every stream has had the history (``execution:started``) replayed, so
    that the live phase starts with no stream still reading the log."""
    pending = [stream.replayed for stream in streams if not stream.replayed.done()]
    if pending:
        await asyncio.wait(pending, timeout=patience)


async def wait_done(streams, patience):
    pending = [stream.done for stream in streams if not stream.done.done()]
    if pending:
        await asyncio.wait(pending, timeout=patience)


def find_py_spy():
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SetupError("py-spy not found: .venv/bin/pip install py-spy")
    return py_spy


PY_SPY_FORMATS = {".json": "speedscope", ".txt": "raw"}  # else an .svg flame graph


def py_spy_output(output, name):
    """``out.svg`` for ``name``: ``out-name.svg``."""
    path = Path(output)
    return str(path.with_name(f"{path.stem}-{name}{path.suffix}"))


async def start_py_spy(py_spy, pid, output, seconds=None, subprocesses=False):
    """Profile ``pid``'s use of the GIL for ``seconds`` (None: until ``stop_py_spy()``)."""
    fmt = PY_SPY_FORMATS.get(Path(output).suffix, "flamegraph")
    return await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        *(["--duration", str(max(int(seconds), 1))] if seconds else []),
        "--format",
        fmt,
        "--output",
        output,
        "--nonblocking",
        "--gil",  # the thread holding the GIL: where the process's core goes
        *(["--subprocesses"] if subprocesses else []),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_py_spy(spy):
    """Have py-spy write its profile now, and wait until it has."""
    if spy.returncode is None:
        spy.send_signal(signal.SIGINT)
    await asyncio.wait_for(spy.wait(), 60)


async def open_all(args, server, path, key):
    """Open ``args.streams`` streams and wait for their history; return them, the
    failures, the seconds it took and how many connected."""
    started = time.monotonic()
    streams, failures, _ = await open_streams(
        server.port, path, key, args.streams, args.connect_concurrency, args.connect_timeout
    )
    await wait_replayed(streams, args.connect_timeout)
    connected = sum(1 for s in streams if s.is_connected)
    return streams, failures, time.monotonic() - started, connected


async def start_producer(execution_id, *options, py_spy=None):
    """Start ``bench/producer.py`` on ``execution_id`` (under ``py-spy record`` if
    ``py_spy`` is ``(py-spy binary, output)``)."""
    command = [sys.executable, str(ROOT / "bench" / "producer.py"), execution_id, *options]
    if py_spy:
        binary, output = py_spy
        fmt = PY_SPY_FORMATS.get(Path(output).suffix, "flamegraph")
        command = [binary, "record", "--format", fmt, "--output", output, "--", *command]
    return await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env={**os.environ, **BENCH_ENV}, stdout=asyncio.subprocess.PIPE
    )


async def producer_report(producer, patience):
    """Wait for a producer to finish; return its JSON line (empty if it failed)."""
    try:
        out, _ = await asyncio.wait_for(producer.communicate(), patience)
    except TimeoutError:
        producer.kill()
        await producer.wait()
        return {}
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


async def run_load(args, server, path, key, execution_id):
    results = {}
    sampler = Sampler(server)
    await sampler.start()
    streams, failures, connect_seconds, connected = await open_all(args, server, path, key)
    results.update(connected=connected, connect_seconds=connect_seconds, failures=failures)
    rss_before, threads, pg = await sampler.sample()
    results["per_process"] = connections_by_pid(server.worker_pids(), server.port)

    busy0, total0 = machine_busy_ticks()
    (server_cpu0, loop_cpu0), client_cpu0 = server_cpu_seconds(server), client_cpu_seconds()
    processes0 = cpu_by_process()
    spy = None
    if args.py_spy:
        spy = await start_py_spy(
            args.py_spy_bin, server.pid, args.py_spy, args.duration, server.workers > 1
        )
    live_started = time.monotonic()
    producer = await start_producer(
        execution_id, "--rate", str(args.rate), "--duration", str(args.duration)
    )
    results["producer"] = await producer_report(producer, 2 * args.duration + 60)
    await wait_done(streams, args.drain_timeout)
    live_seconds = time.monotonic() - live_started
    busy1, total1 = machine_busy_ticks()
    server_cpu1, loop_cpu1 = server_cpu_seconds(server)
    results["others"] = top_consumers(
        processes0,
        cpu_by_process(),
        live_seconds,
        {*server.pids(), os.getpid(), producer.pid},
    )
    results.update(
        live_seconds=live_seconds,
        server_cores=(server_cpu1 - server_cpu0) / live_seconds,
        loop_cores=(loop_cpu1 - loop_cpu0) / live_seconds,
        client_cores=(client_cpu_seconds() - client_cpu0) / live_seconds,
        machine_busy=(busy1 - busy0) / max(total1 - total0, 1),
        rss_before=rss_before,
        threads=threads,
        pg=pg,
    )
    rss, threads, pg = await sampler.sample()
    results.update(rss_after=rss, peak_rss=sampler.peak_rss, peak_threads=sampler.peak_threads)
    results.update(peak_pg=sampler.peak_pg, peak_kernel_queue=sampler.peak_kernel_queue)
    if spy is not None:
        await asyncio.wait_for(spy.wait(), 30)
    await close_streams(streams)
    await sampler.stop()
    return streams, results


async def run_idle(args, server, path, key, recorder):
    results = {}
    sampler = Sampler(server)
    await sampler.start()
    # Warm-up: a first stream pays one-off costs (the hub, its channel-layer receiver,
    # the Redis and thread pools, lazily imported code) that are not per-stream memory.
    warm, _, _ = await open_streams(server.port, path, key, 3, 3, args.connect_timeout)
    await close_streams(warm)
    await asyncio.sleep(1.0)
    rss_before, threads_before, pg_before = await sampler.sample()
    sampler.peak_threads = sampler.peak_pg = 0
    snapshot_before = await server.snapshot()
    streams, failures, connect_seconds, connected = await open_all(args, server, path, key)
    await asyncio.sleep(1.0)
    rss_open, threads_open, pg_open = await sampler.sample()
    # Hold for a few keepalive intervals: every stream runs its key checks and keepalives,
    # and nothing else happens: the server's CPU is the ticks'.
    server_cpu0 = server_cpu_seconds(server)[0]
    await asyncio.sleep(args.hold)
    hold_cpu = server_cpu_seconds(server)[0] - server_cpu0
    rss_held, threads_held, pg_held = await sampler.sample()
    snapshot_held = await server.snapshot()
    keepalives = sum(s.keepalives for s in streams)
    still_open = sum(1 for s in streams if not s.done.done())
    # End: one terminal event fanned out to every stream.
    completed_at = time.time()
    await asyncio.to_thread(complete_execution, recorder)
    await wait_done(streams, args.drain_timeout)
    fanout = [s.times[-1] - completed_at for s in streams if s.terminal and len(s.times)]
    results.update(
        connected=connected,
        failures=failures,
        connect_seconds=connect_seconds,
        rss_before=rss_before,
        threads_before=threads_before,
        pg_before=pg_before,
        rss_open=rss_open,
        rss_held=rss_held,
        peak_rss=sampler.peak_rss,
        threads_open=threads_open,
        threads_held=threads_held,
        peak_threads=sampler.peak_threads,
        pg_open=pg_open,
        pg_held=pg_held,
        peak_pg=sampler.peak_pg,
        keepalives=keepalives,
        still_open=still_open,
        hold_cpu=hold_cpu,
        fanout=sorted(fanout),
        snapshots=(snapshot_before, snapshot_held),
    )
    await close_streams(streams)
    await sampler.stop()
    return streams, results


# Analysis and the summary.


def percentile(ordered, fraction):
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def delivery_tallies(streams, last_seq):
    """Return what ``streams`` missed or got wrong, each having to receive exactly the
    ids after its ``Last-Event-ID`` (``stream.after``, else 0) up to ``last_seq``, in
    order, once: ``lost`` (stream, id) pairs never received, ids ``duplicated``,
    ``reordered`` (an id not above the one before) and ``unexpected`` (outside the range,
    such as one the client had already)."""
    tallies = dict.fromkeys(("lost", "duplicated", "reordered", "unexpected"), 0)
    for stream in streams:
        first = (stream.after or 0) + 1
        ids = stream.ids
        if ids == array("q", range(first, last_seq + 1)):
            continue  # the usual case, compared at C speed
        seen = set(ids)
        tallies["lost"] += sum(1 for seq in range(first, last_seq + 1) if seq not in seen)
        tallies["duplicated"] += len(ids) - len(seen)
        tallies["reordered"] += sum(1 for a, b in itertools.pairwise(ids) if b <= a)
        tallies["unexpected"] += sum(1 for seq in seen if not first <= seq <= last_seq)
    return tallies


def delivery_problems(streams, asked, last_seq, terminal=True):
    """Return ``delivery_tallies()`` with the streams that ``failed`` to open (of
    ``asked``) and (``terminal``) those ``unfinished``: open ones that did not end with
    the terminal event; and the list of problems (empty when all is well)."""
    opened = [stream for stream in streams if stream.is_connected]
    tallies = delivery_tallies(opened, last_seq)
    tallies["failed"] = asked - len(opened)
    tallies["unfinished"] = (
        sum(1 for stream in opened if not (stream.terminal and stream.done.done()))
        if terminal
        else 0
    )
    problems = [f"{name} {value}" for name, value in tallies.items() if value]
    errors = sorted({stream.error for stream in streams if stream.error})
    if problems and errors:
        problems.append(f"stream errors: {'; '.join(errors[:3])}")
    return tallies, problems


def analyse_load(streams, times, first_live_seq):
    """Return lag percentiles, deliveries, losses, duplicates and reorders."""
    last_seq = max(times, default=0)
    lags = array("d")
    deliveries = 0
    first_created = min((t for seq, t in times.items() if seq >= first_live_seq), default=0.0)
    last_received = first_created
    worst = {}  # seq -> its largest lag over all streams
    late = late_streams = 0  # deliveries over a second late, streams that had any
    for stream in streams:
        ids = stream.ids
        stream_late = late
        for seq, received in zip(ids, stream.times, strict=True):
            if seq >= first_live_seq and seq in times:
                lag = received - times[seq]
                lags.append(lag)
                worst[seq] = max(worst.get(seq, lag), lag)
                late += lag > 1.0
                deliveries += 1
                last_received = max(last_received, received)
        late_streams += late > stream_late
    ordered = sorted(lags)
    window = max(last_received - first_created, 1e-9)
    return {
        "last_seq": last_seq,
        "lags": ordered,
        "deliveries": deliveries,
        "delivered_per_second": deliveries / window,
        "window": window,
        "slowest": max(worst, key=worst.get, default=None),
        "late": late,
        "late_streams": late_streams,
        "late_events": sum(1 for lag in worst.values() if lag > 1.0),
    }


def row(name, value):
    print(f"  {name:<38} {value}")


def print_tallies(tallies, errors=()):
    row("events lost (stream x id)", tallies["lost"])
    row("events duplicated / unexpected", f"{tallies['duplicated']} / {tallies['unexpected']}")
    row("events out of order", tallies["reordered"])
    row("streams failed to open", tallies["failed"])
    unfinished = f"{tallies['unfinished']}{' ' + '; '.join(errors[:3]) if errors else ''}"
    row("streams without their terminal event", unfinished)


def describe_load(load):
    others = f"; busiest: {load['others']}" if load["others"] else ""
    return f"{load['busy'] * 100:.0f} % busy, load average {load['loadavg']:.2f}{others}"


def finish(mode, figures, problems, load_before, verified):
    """Print the machine's load before and after the run and whether it ``verified``
    (what was checked, if there are no ``problems``), then ``figures`` as one JSON line;
    return the exit status: 1 if anything was lost, doubled, reordered or left open."""
    load_after = machine_load()
    row("machine before the run", describe_load(load_before))
    row("machine after the run", describe_load(load_after))
    if problems:
        row("VERIFICATION FAILED", "; ".join(problems))
    else:
        row("verified", verified)
    line = {"mode": mode, **figures, "verified": not problems, "problems": problems}
    line.update(machine_before=load_before, machine_after=load_after)
    print(json.dumps(line, default=str))
    return 1 if problems else 0


def print_load_summary(args, server, streams, results, analysis, tallies):
    producer = results["producer"]
    lags = analysis["lags"]
    live_events = analysis["last_seq"] - 1
    errors = sorted({s.error for s in streams if s.ended_early and s.error})
    print()
    print(
        f"SSE load: {describe_server(server)}, {args.streams} streams, "
        f"{args.rate:g} ev/s for {args.duration:g} s"
    )
    row("streams connected", f"{results['connected']} / {args.streams}")
    if server.workers > 1:
        shares = ", ".join(f"{count}" for count in results["per_process"].values())
        row("streams per worker process", shares)
    row("connect phase", f"{results['connect_seconds']:.2f} s")
    row(
        "events recorded (producer)",
        f"{producer.get('recorded', '?')} + terminal at {producer.get('rate', 0):.1f} ev/s "
        f"(worst behind {producer.get('worst_behind_ms', 0):.0f} ms, "
        f"record p50 {producer.get('record_p50_ms', 0):.1f} ms)",
    )
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        row(f"lag {name}", f"{percentile(lags, fraction) * 1000:.1f} ms")
    row("slowest event (seq of last)", f"{analysis['slowest']} of {analysis['last_seq']}")
    row(
        "deliveries over 1 s late",
        f"{analysis['late']} ({analysis['late_events']} events, "
        f"{analysis['late_streams']} streams)",
    )
    row(
        "deliveries (frames x streams)", f"{analysis['deliveries']} of {live_events * args.streams}"
    )
    row("delivered, all streams", f"{analysis['delivered_per_second']:.0f} ev/s")
    row(
        "delivered per stream",
        f"{analysis['delivered_per_second'] / max(args.streams, 1):.1f} ev/s",
    )
    print_tallies(tallies, errors)
    producer_cores = producer.get("cpu_seconds", 0) / max(producer.get("elapsed", 1), 1e-9)
    busy_cores = results["machine_busy"] * CORES
    rest = busy_cores - results["server_cores"] - results["client_cores"] - producer_cores
    row(
        "server CPU (its event-loop thread)",
        f"{results['server_cores']:.2f} cores ({results['loop_cores']:.2f})",
    )
    row("client / producer CPU", f"{results['client_cores']:.2f} / {producer_cores:.2f} cores")
    row("rest of machine (PG, Redis, others)", f"{max(rest, 0):.2f} cores")
    server_seconds = results["server_cores"] * results["live_seconds"]
    per_frame = server_seconds / max(analysis["deliveries"], 1) * 1e6
    row("server CPU per delivered frame", f"{per_frame:.1f} us")
    row("machine busy", f"{results['machine_busy'] * 100:.0f} % of {CORES} cores")
    row("busiest other processes (cores)", results["others"])
    row(
        "server RSS open / end / peak",
        f"{results['rss_before'] / 1024:.0f} / "
        f"{results['rss_after'] / 1024:.0f} / {results['peak_rss'] / 1024:.0f} MiB",
    )
    row("server threads (peak)", results["peak_threads"])
    row("kernel socket queues (peak)", f"{results['peak_kernel_queue'] / 1024:.0f} KiB")
    row("server's PostgreSQL connections (peak)", results["peak_pg"])
    if results["failures"]:
        row("connect failures", f"{len(results['failures'])}: {results['failures'][0]}")


def server_label(name, workers):
    """``uvicorn``, or ``uvicorn --workers 2``."""
    return f"{name} --workers {workers}" if workers > 1 else name


def in_turns(items, rounds):
    """``items`` ``rounds`` times over, the order reversed each round: what two checkouts
    measured in turns take, so that neither always goes first."""
    return [item for turn in range(rounds) for item in (items if turn % 2 == 0 else items[::-1])]


def describe_server(server):
    return f"{server_label(server.name, server.workers)} (pid {server.pid})"


def print_idle_summary(args, server, results):
    grown = results["rss_held"] - results["rss_before"]
    fanout = results["fanout"]
    per_stream = grown / max(results["connected"], 1)
    print()
    print(f"SSE idle: {describe_server(server)}, {args.streams} streams, held {args.hold:g} s")
    row("streams connected", f"{results['connected']} / {args.streams}")
    row(
        "connect phase",
        f"{results['connect_seconds']:.2f} s "
        f"({results['connected'] / max(results['connect_seconds'], 1e-9):.0f} streams/s)",
    )
    row("server RSS before", f"{results['rss_before'] / 1024:.1f} MiB")
    row(
        "server RSS all open / after hold",
        f"{results['rss_open'] / 1024:.1f} / "
        f"{results['rss_held'] / 1024:.1f} MiB (peak {results['peak_rss'] / 1024:.1f})",
    )
    row(
        "memory per idle stream",
        f"{per_stream:.1f} KiB (at open: "
        f"{(results['rss_open'] - results['rss_before']) / max(results['connected'], 1):.1f})",
    )
    row(
        "server threads before / open / peak",
        f"{results['threads_before']} / {results['threads_held']} / {results['peak_threads']}",
    )
    row(
        "server's PG connections before/open/peak",
        f"{results['pg_before']} / {results['pg_held']} / {results['peak_pg']}",
    )
    row("keepalive interval (site setting)", f"{args.keepalive:g} s")
    row("keepalives received", f"{results['keepalives']} ({results['still_open']} streams open)")
    row(
        "server CPU while idle (the ticks)",
        f"{results['hold_cpu'] / args.hold * 100:.1f} % of a core over {args.hold:g} s "
        f"({args.hold / args.keepalive:.1f} keepalive intervals)",
    )
    row(
        "terminal event fan-out p50 / p99 / max",
        f"{percentile(fanout, 0.5) * 1000:.0f} / {percentile(fanout, 0.99) * 1000:.0f} / "
        f"{percentile(fanout, 1.0) * 1000:.0f} ms to {len(fanout)} streams",
    )
    if results["failures"]:
        row("connect failures", f"{len(results['failures'])}: {results['failures'][0]}")


def print_allocations(before, after, streams, top=15):
    """Print the allocation sites whose traced memory grew most, per stream."""
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    stats = new.compare_to(old, "traceback")
    grown = sum(stat.size_diff for stat in stats)
    print()
    print(f"Traced Python memory grown per stream: {grown / streams / 1024:.1f} KiB")
    for stat in stats[:top]:
        frames = " < ".join(
            f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
            for frame in stat.traceback[::-1][:4]
        )
        print(
            f"  {stat.size_diff / streams:8.0f} B {stat.count_diff / streams:5.1f} blocks  {frames}"
        )


async def bench(args, raw_key, recorder):
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"stream_load_{args.server}_{port}.log"
    tracemalloc_dir = None
    if args.tracemalloc:
        tracemalloc_dir = tempfile.mkdtemp(prefix=f"stream_load_{args.server}_")
    server = Server(args.server, args.app, port, log_path, tracemalloc_dir, args.workers)
    path = f"/api/v1/executions/{recorder.execution_id}/events"
    try:
        await server.start(raw_key)
        if args.idle:
            streams, results = await run_idle(args, server, path, raw_key, recorder)
        else:
            streams, results = await run_load(args, server, path, raw_key, recorder.execution_id)
    finally:
        server.stop()
    return server, streams, results


def common_arguments(parser, server="uvicorn", py_spy="profile the server"):
    """Add the options every mode has."""
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default=server)
    parser.add_argument(
        "--settings",
        default=BENCH_ENV["DJANGO_SETTINGS_MODULE"],
        help="DJANGO_SETTINGS_MODULE of every process (to compare configurations)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait for the machine to be under 20%% busy before starting",
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUTPUT",
        help=f"{py_spy}: .svg flame graph, .json speedscope, .txt collapsed stacks "
        "(needs .venv/bin/pip install py-spy)",
    )


def parse_with_workers(parser, rounds=None):
    """Add ``--workers`` (uvicorn worker processes behind the one port) and parse.

    With ``rounds`` (what a round is, and how many by default), add ``--against
    CHECKOUT``, another checkout of the project served in turns with this one, and
    ``--rounds``: on a shared machine whose speed drifts, two commits measured one after
    the other differ by the drift, and in turns they go through the same moments.
    """
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes behind the one port"
    )
    if rounds is not None:
        what, default = rounds
        parser.add_argument(
            "--against",
            type=Path,
            metavar="CHECKOUT",
            help="serve this other checkout of the project too, in turns with this one",
        )
        parser.add_argument(
            "--rounds", type=int, help=f"{what} (default 1, {default} with --against)"
        )
    args = parser.parse_args()
    if args.workers > 1 and args.server != "uvicorn":
        parser.error("--workers is uvicorn's")
    if rounds is not None:
        if args.against is not None and not (args.against / "manage.py").is_file():
            parser.error(f"--against {args.against}: not a checkout of this project")
        args.against = args.against and args.against.resolve()  # the servers' cwd differs
        args.rounds = args.rounds or (default if args.against else 1)
    return args


def configure(args, streams=0):
    """Apply the common options and prepare PostgreSQL and Redis (``SetupError`` if not)."""
    BENCH_ENV["DJANGO_SETTINGS_MODULE"] = args.settings
    raise_fd_limit(streams)
    args.py_spy_bin = find_py_spy() if args.py_spy else None
    prepare_stores()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, "daphne", "profile the server during the events")
    parser.add_argument("--idle", action="store_true", help="measure memory per idle stream")
    parser.add_argument(
        "--app",
        default="flowmaestro.asgi:application",
        help="ASGI application to serve (bench.bare_sse:application: the server's floor)",
    )
    parser.add_argument("--streams", type=int, help="default 1000, or 5000 with --idle")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of events")
    parser.add_argument("--hold", type=float, default=20.0, help="--idle: seconds held open")
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="--idle: trace the server's Python allocations and list where the "
        "per-stream memory goes (slower; use fewer streams)",
    )
    args = parse_with_workers(parser)
    if args.streams is None:
        args.streams = 5000 if args.idle else 1000
    return args


def load_figures(args, server, results, analysis, tallies):
    lags = analysis["lags"]
    producer = results["producer"]
    return {
        "server": server.name,
        "workers": server.workers,
        "streams": args.streams,
        "connected": results["connected"],
        "rate": args.rate,
        **{
            f"lag_{name}_ms": round(percentile(lags, fraction) * 1000, 1)
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "delivered_per_stream": round(analysis["delivered_per_second"] / args.streams, 2),
        "server_cores": round(results["server_cores"], 3),
        "loop_cores": round(results["loop_cores"], 3),
        "client_cores": round(results["client_cores"], 3),
        "producer_rate": round(producer.get("rate", 0.0), 1),
        "streams_per_process": list(results["per_process"].values()),
        "peak_pg": results["peak_pg"],
        "peak_threads": results["peak_threads"],
        **tallies,
    }


def idle_figures(args, server, results, tallies):
    connected = max(results["connected"], 1)
    return {
        "server": server.name,
        "workers": server.workers,
        "streams": args.streams,
        "connected": results["connected"],
        "connect_seconds": round(results["connect_seconds"], 2),
        "kib_per_stream": round((results["rss_held"] - results["rss_before"]) / connected, 2),
        "rss_before_mib": round(results["rss_before"] / 1024, 1),
        "rss_held_mib": round(results["rss_held"] / 1024, 1),
        "threads_held": results["threads_held"],
        "pg_held": results["pg_held"],
        "peak_pg": results["peak_pg"],
        "ticks_core_pct": round(results["hold_cpu"] / args.hold * 100, 2),
        "hold_seconds": args.hold,
        "keepalive_interval": args.keepalive,
        "fanout_p99_ms": round(percentile(results["fanout"], 0.99) * 1000, 1),
        **tallies,
    }


def main():
    args = parse_args()
    try:
        configure(args, args.streams)
        raw_key, recorder = create_fixtures()
        from executions.conf import get_config

        args.keepalive = get_config()["KEEPALIVE_INTERVAL"]
        args.background = wait_for_quiet_machine(args.quiet_wait)
        server, streams, results = asyncio.run(bench(args, raw_key, recorder))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    if args.idle:
        # Each stream: execution:started replayed, then execution:completed live.
        tallies, problems = delivery_problems(streams, args.streams, last_seq=2)
        print_idle_summary(args, server, results)
        print_tallies(tallies)
        if all(results["snapshots"]):
            print_allocations(*results["snapshots"], results["connected"])
        mode, figures = "idle", idle_figures(args, server, results, tallies)
    else:
        times = event_times(recorder.execution_id)
        analysis = analyse_load(streams, times, first_live_seq=2)
        tallies, problems = delivery_problems(streams, args.streams, analysis["last_seq"])
        print_load_summary(args, server, streams, results, analysis, tallies)
        mode, figures = "load", load_figures(args, server, results, analysis, tallies)
    row("server log", server.log_path)
    verified = "every stream had every event once, in order, through the terminal event"
    return finish(mode, figures, problems, args.background, verified)


if __name__ == "__main__":
    sys.exit(main())
