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

Traffic goes to 127.0.0.1 only; every phase is bounded in time; exits non-zero only when
setup fails.
"""

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DATABASE_NAME = "bench"
DATABASE_URL = f"postgres://postgres@{HOST}:5432/{DATABASE_NAME}"
ADMIN_DSN = f"postgresql://postgres@{HOST}:5432/postgres"
REDIS_URL = f"redis://{HOST}:6379/5"
BENCH_ENV = {
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": REDIS_URL,
    "DJANGO_SETTINGS_MODULE": "flowmaestro.settings",
    # Production-like: DEBUG off (no per-connection query log), warnings only.
    "DEBUG": "0",
    "LOG_LEVEL": "WARNING",
    "SECRET_KEY": "bench-" + "x" * 50,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
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

    def __init__(self, request):
        loop = asyncio.get_running_loop()
        self.request = request
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

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        now = time.time()
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


def stream_request(port, path, key):
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-API-Key: {key}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()


async def open_streams(port, path, key, count, concurrency, patience):
    """Open ``count`` streams, at most ``concurrency`` waiting for `connected` at once."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    request = stream_request(port, path, key)
    streams = []
    failures = []

    async def one():
        async with gate:
            try:
                _, stream = await loop.create_connection(lambda: Stream(request), HOST, port)
                streams.append(stream)
                await asyncio.wait_for(asyncio.shield(stream.connected), patience)
                if not stream.is_connected:
                    failures.append(stream.error or "closed before `connected`")
            except (OSError, TimeoutError) as exc:
                failures.append(repr(exc))

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    return streams, failures, time.monotonic() - started


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


def server_command(server, port, app):
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
    ]


def proc_status(pid):
    """Return the server's RSS in KiB and its thread count."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/task"))


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
        f"{name} {pid}: {delta / seconds:.2f}" for delta, name, pid in deltas[:count] if delta > 0
    )


def wait_for_quiet_machine(patience, busy_limit=0.2, window=3.0):
    """Wait (at most ``patience`` seconds) until the machine is under ``busy_limit``
    busy over ``window`` seconds; return the last busy share seen."""
    deadline = time.monotonic() + patience
    while True:
        busy0, total0 = machine_busy_ticks()
        time.sleep(window)
        busy1, total1 = machine_busy_ticks()
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        if busy < busy_limit or time.monotonic() >= deadline:
            return busy


def client_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sampler:
    """Sample the server's RSS, threads and PostgreSQL connections once a second."""

    def __init__(self, pid, port):
        self.pid, self.port = pid, port
        self.peak_rss = self.peak_threads = self.peak_pg = self.peak_kernel_queue = 0
        self.pg = None
        self.task = None

    async def start(self):
        import psycopg

        self.pg = await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True)
        self.task = asyncio.create_task(self.run())

    async def pg_connections(self):
        cursor = await self.pg.execute(
            "select count(*) from pg_stat_activity where datname = %s", (DATABASE_NAME,)
        )
        return (await cursor.fetchone())[0]

    async def sample(self):
        rss, threads = proc_status(self.pid)
        pg = await self.pg_connections()
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, threads)
        self.peak_pg = max(self.peak_pg, pg)
        self.peak_kernel_queue = max(self.peak_kernel_queue, socket_backlogs(self.port))
        return rss, threads, pg

    async def run(self):
        while True:
            await self.sample()
            await asyncio.sleep(1.0)

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.pg is not None:
            await self.pg.close()


# Setup: database, Redis, migrations, user, key, execution.


def raise_fd_limit(streams):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * streams + 1024  # the server inherits it and holds the other ends
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
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, **BENCH_ENV},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrate.returncode:
        raise SetupError(f"migrate failed:\n{migrate.stderr[-2000:]}")


def create_fixtures():
    """Return ``(raw_key, recorder)`` for a new key and a new running execution."""
    sys.path.insert(0, str(ROOT))
    os.environ.update(BENCH_ENV)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connections

    from apikeys.models import APIKey
    from executions.recorder import ExecutionRecorder

    user, _ = get_user_model().objects.get_or_create(username="bench")
    _, raw_key = APIKey.objects.create_key(
        owner=user,
        name=f"stream_load {time.strftime('%Y-%m-%d %H:%M:%S')}",
        scopes=["executions:read"],
        rate_limit_per_minute=100_000_000,
        rate_limit_per_day=1_000_000_000,
    )
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_bench_stream_load")
    recorder.start()
    connections.close_all()
    return raw_key, recorder


def event_times(execution_id):
    """Return ``{seq: created_at as Unix time}`` of the execution's logged events."""
    from django.db import connections

    from executions.models import Event

    rows = Event.objects.filter(execution_id=execution_id).values_list("seq", "created_at")
    times = {seq: created.timestamp() for seq, created in rows}
    connections.close_all()
    return times


def complete_execution(recorder):
    from django.db import connections

    try:
        recorder.complete({"bench": "idle"})
    finally:
        connections.close_all()


# The two modes.


class Server:
    def __init__(self, name, app, port, log_path, tracemalloc_dir=None):
        self.name, self.app, self.port, self.log_path = name, app, port, log_path
        self.tracemalloc_dir = tracemalloc_dir
        self.snapshots = 0
        self.process = None

    def spawn(self):
        env = {**os.environ, **BENCH_ENV}
        if self.tracemalloc_dir:
            # bench/tracemalloc_hook/sitecustomize.py traces and dumps on SIGUSR1.
            hook = ROOT / "bench" / "tracemalloc_hook"
            env["PYTHONPATH"] = os.pathsep.join([str(hook), BENCH_ENV["PYTHONPATH"]])
            env["BENCH_TRACEMALLOC_DIR"] = self.tracemalloc_dir
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                server_command(self.name, self.port, self.app),
                cwd=ROOT,
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


async def start_py_spy(py_spy, pid, output, seconds):
    formats = {".json": "speedscope", ".txt": "raw"}
    fmt = formats.get(Path(output).suffix, "flamegraph")
    return await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--format",
        fmt,
        "--output",
        output,
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


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


async def run_load(args, server, path, key, execution_id):
    results = {}
    sampler = Sampler(server.pid, server.port)
    await sampler.start()
    streams, failures, connect_seconds, connected = await open_all(args, server, path, key)
    results.update(connected=connected, connect_seconds=connect_seconds, failures=failures)
    rss_before, threads, pg = await sampler.sample()

    busy0, total0 = machine_busy_ticks()
    server_cpu0, client_cpu0 = proc_cpu_seconds(server.pid), client_cpu_seconds()
    loop_cpu0 = proc_cpu_seconds(server.pid, server.pid)
    processes0 = cpu_by_process()
    spy = None
    if args.py_spy:
        spy = await start_py_spy(args.py_spy_bin, server.pid, args.py_spy, args.duration)
    live_started = time.monotonic()
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "producer.py"),
        execution_id,
        "--rate",
        str(args.rate),
        "--duration",
        str(args.duration),
        cwd=ROOT,
        env={**os.environ, **BENCH_ENV},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(producer.communicate(), 2 * args.duration + 60)
        lines = out.decode().strip().splitlines()
        results["producer"] = json.loads(lines[-1]) if lines else {}
    except TimeoutError:
        producer.kill()
        await producer.wait()
        results["producer"] = {}
    await wait_done(streams, args.drain_timeout)
    live_seconds = time.monotonic() - live_started
    busy1, total1 = machine_busy_ticks()
    results["others"] = top_consumers(
        processes0, cpu_by_process(), live_seconds, {server.pid, os.getpid(), producer.pid}
    )
    results.update(
        live_seconds=live_seconds,
        server_cores=(proc_cpu_seconds(server.pid) - server_cpu0) / live_seconds,
        loop_cores=(proc_cpu_seconds(server.pid, server.pid) - loop_cpu0) / live_seconds,
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
    sampler = Sampler(server.pid, server.port)
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
    # Hold past a keepalive interval: every stream runs its key check and keepalive.
    server_cpu0 = proc_cpu_seconds(server.pid)
    await asyncio.sleep(args.hold)
    hold_cpu = proc_cpu_seconds(server.pid) - server_cpu0
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


def analyse_load(streams, times, first_live_seq):
    """Return lag percentiles, deliveries, losses, duplicates and reorders."""
    expected = set(times)
    last_seq = max(expected, default=0)
    lags = array("d")
    deliveries = lost = duplicated = reordered = 0
    first_created = min((t for seq, t in times.items() if seq >= first_live_seq), default=0.0)
    last_received = first_created
    worst = {}  # seq -> its largest lag over all streams
    late = late_streams = 0  # deliveries over a second late, streams that had any
    for stream in streams:
        ids = stream.ids
        seen = set(ids)
        lost += len(expected - seen)
        duplicated += len(ids) - len(seen)
        reordered += sum(1 for a, b in itertools.pairwise(ids) if b <= a)
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
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
        "slowest": max(worst, key=worst.get, default=None),
        "late": late,
        "late_streams": late_streams,
        "late_events": sum(1 for lag in worst.values() if lag > 1.0),
    }


def row(name, value):
    print(f"  {name:<38} {value}")


def print_load_summary(args, server, streams, results, analysis):
    producer = results["producer"]
    lags = analysis["lags"]
    live_events = analysis["last_seq"] - 1
    early = sum(1 for s in streams if s.ended_early)
    errors = sorted({s.error for s in streams if s.ended_early and s.error})
    print()
    print(
        f"SSE load: {server.name}, {args.streams} streams, "
        f"{args.rate:g} ev/s for {args.duration:g} s"
    )
    row("streams connected", f"{results['connected']} / {args.streams}")
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
    row("events lost (stream x id)", analysis["lost"])
    row("events duplicated", analysis["duplicated"])
    row("events out of order", analysis["reordered"])
    row("streams ended early", f"{early}{' ' + '; '.join(errors[:3]) if errors else ''}")
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
    row("PostgreSQL connections (peak)", results["peak_pg"])
    if results["failures"]:
        row("connect failures", f"{len(results['failures'])}: {results['failures'][0]}")


def print_idle_summary(args, server, results):
    grown = results["rss_held"] - results["rss_before"]
    fanout = results["fanout"]
    per_stream = grown / max(results["connected"], 1)
    print()
    print(f"SSE idle: {server.name}, {args.streams} streams, held {args.hold:g} s")
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
        "PostgreSQL conns before / open / peak",
        f"{results['pg_before']} / {results['pg_held']} / {results['peak_pg']}",
    )
    row("keepalive interval (site setting)", f"{args.keepalive:g} s")
    row("keepalives received", f"{results['keepalives']} ({results['still_open']} streams open)")
    row("server CPU while idle", f"{results['hold_cpu'] / args.hold:.2f} cores")
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
    server = Server(args.server, args.app, port, log_path, tracemalloc_dir)
    path = f"/api/v1/executions/{recorder.execution_id}/events"
    server.spawn()
    await server.wait_ready(
        f"/api/v1/executions/exec_missing{secrets.token_hex(4)}/events", raw_key
    )
    try:
        if args.idle:
            streams, results = await run_idle(args, server, path, raw_key, recorder)
        else:
            streams, results = await run_load(args, server, path, raw_key, recorder.execution_id)
    finally:
        server.stop()
    return server, streams, results


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne")
    parser.add_argument("--idle", action="store_true", help="measure memory per idle stream")
    parser.add_argument(
        "--app",
        default="flowmaestro.asgi:application",
        help="ASGI application to serve (bench.bare_sse:application: the server's floor)",
    )
    parser.add_argument(
        "--settings",
        default=BENCH_ENV["DJANGO_SETTINGS_MODULE"],
        help="DJANGO_SETTINGS_MODULE of every process (to compare configurations)",
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
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait for the machine to be under 20%% busy before starting",
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUTPUT",
        help="profile the server during the events: .svg flame graph, .json speedscope, "
        ".txt collapsed stacks",
    )
    args = parser.parse_args()
    if args.streams is None:
        args.streams = 5000 if args.idle else 1000
    return args


def main():
    args = parse_args()
    BENCH_ENV["DJANGO_SETTINGS_MODULE"] = args.settings
    try:
        raise_fd_limit(args.streams)
        args.py_spy_bin = find_py_spy() if args.py_spy else None
        prepare_stores()
        raw_key, recorder = create_fixtures()
        from executions.conf import get_config

        args.keepalive = get_config()["KEEPALIVE_INTERVAL"]
        args.background = wait_for_quiet_machine(args.quiet_wait)
        server, streams, results = asyncio.run(bench(args, raw_key, recorder))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    if args.idle:
        print_idle_summary(args, server, results)
        if all(results["snapshots"]):
            print_allocations(*results["snapshots"], results["connected"])
    else:
        times = event_times(recorder.execution_id)
        analysis = analyse_load(streams, times, first_live_seq=2)
        print_load_summary(args, server, streams, results, analysis)
    row("machine busy before the run", f"{args.background * 100:.0f} %")
    row("server log", server.log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
