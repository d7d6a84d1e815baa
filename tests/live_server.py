"""Real server and producer processes for the live tests, on pytest-django's test database,
and the bytes a stream must carry, which the in-process tests check too.

    with live_server("daphne", EXECUTIONS_KEEPALIVE="0.3") as server:
        httpx.get(server.url + events_url("exec_x"))

The processes run ``tests.server_settings`` against the database pytest-django created for
this session and the tests' Redis, so rows a ``transaction=True`` test commits are what
the server reads. Call these helpers only after ``django_db_setup`` has run.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from urllib.parse import quote

import redis
from django.conf import settings
from django.db import connection

from executions.messages import group_name
from executions.models import Event

BASE_DIR = Path(__file__).resolve().parent.parent
APPLICATION = "flowmaestro.asgi:application"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
# How long a test reads a stream for what must come; far above what it takes.
READ_TIMEOUT = 20.0
KEEPALIVE_FRAME = b": keepalive"

SERVER_COMMANDS = {
    "daphne": lambda port, application: ["-m", "daphne", "-b", HOST, "-p", str(port), application],
    # The demo site's daphne (make demo), whose access log leaves out query strings.
    "demo-daphne": lambda port, application: [
        *("-m", "flowmaestro.serve", "-b", HOST, "-p", str(port), application)
    ],
    "uvicorn": lambda port, application: [
        "-m",
        "uvicorn",
        application,
        "--host",
        HOST,
        "--port",
        str(port),
        "--lifespan",
        "off",
    ],
}


def events_url(execution_id, mount="/api/v1/"):
    """The path of an execution's stream where the site mounts ``executions.urls``."""
    return f"{mount}executions/{execution_id}/events"


def expected_body(execution_id, status, after=0):
    """The whole stream the contract gives, built from the log: ``retry``, ``connected``
    with ``status``, then every event after ``after`` as ``id``/``event``/``data``."""
    connected = json.dumps({"type": "connected", "execution_id": execution_id, "status": status})
    rows = Event.objects.filter(execution_id=execution_id, seq__gt=after).order_by("seq")
    return f"retry: 3000\n\nevent: connected\ndata: {connected}\n\n".encode() + b"".join(
        f"id: {e.seq}\nevent: {e.type}\ndata: {e.data}\n\n".encode() for e in rows
    )


def frames_of(body):
    """The complete frames in ``body``, without their blank-line terminators."""
    return body.split(b"\n\n")[:-1]


def ids_of(body):
    """The ``id:`` of every event frame in ``body``, in order."""
    return [
        int(frame.split(b"\n", 1)[0].removeprefix(b"id: "))
        for frame in frames_of(body)
        if frame.startswith(b"id: ")
    ]


def without_keepalives(body):
    """``body`` without its keepalive comments, which a slow moment may add anywhere."""
    return b"".join(frame + b"\n\n" for frame in frames_of(body) if frame != KEEPALIVE_FRAME)


PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
CORE_LAYER = "channels_redis.core.RedisChannelLayer"


def redis_layer(backend):
    """A ``CHANNEL_LAYERS["default"]`` on the site's Redis with the given backend."""
    return {"BACKEND": backend, "CONFIG": settings.CHANNEL_LAYERS["default"]["CONFIG"]}


def group_members(redis_client, execution_id):
    """How many subscribers (one per server process) the execution's group has in Redis,
    on the pub/sub or the core channels-redis layer that ``settings`` configures."""
    layer = settings.CHANNEL_LAYERS["default"]
    prefix = layer["CONFIG"]["prefix"]
    if layer["BACKEND"] == PUBSUB_LAYER:
        channel = f"{prefix}__group__{group_name(execution_id)}"
        return dict(redis_client.pubsub_numsub(channel))[channel.encode()]
    return redis_client.zcard(f"{prefix}:group:{group_name(execution_id)}")


def forget_groups(redis_client, execution_id):
    """Do to the execution's group what a Redis restart does: the pub/sub layer's
    connections drop (and reconnect), the core layer's group set is gone."""
    layer = settings.CHANNEL_LAYERS["default"]
    if layer["BACKEND"] == PUBSUB_LAYER:
        assert redis_client.client_kill_filter(_type="pubsub") >= 1
    else:
        prefix = layer["CONFIG"]["prefix"]
        assert redis_client.delete(f"{prefix}:group:{group_name(execution_id)}") == 1


def database_url():
    """Return a ``DATABASE_URL`` for the test database this session's connection uses."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"


def process_env(**overrides):
    """Return the environment of a server or producer process; ``overrides`` are strings."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LiveStream:
    """An open stream to a live server, read as the test asks."""

    def __init__(self, response):
        self.response = response
        self.body = b""
        self.chunks = response.iter_raw()

    def read_until(self, predicate=None):
        """Read until ``predicate(body)`` holds or, without one, until the server ends the
        stream; return the body so far."""
        deadline = time.monotonic() + READ_TIMEOUT
        for chunk in self.chunks:
            self.body += chunk
            if predicate is not None and predicate(self.body):
                return self.body
            assert time.monotonic() < deadline, (
                f"Still waiting after {READ_TIMEOUT} s: {self.body!r}"
            )
        assert predicate is None, f"The stream ended first: {self.body!r}"
        return self.body


class LiveServer:
    """One ASGI server process serving ``application`` (the demo site's by default)."""

    def __init__(self, server="daphne", application=APPLICATION, **env):
        self.command = partial(SERVER_COMMANDS[server], application=application)
        self.env = process_env(**env)
        self.port = free_port()
        self.process = None
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        """Start the process and return once its port accepts connections."""
        self.process = subprocess.Popen(
            [sys.executable, *self.command(self.port)],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The server exited at startup:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"The server did not listen within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def stop(self):
        """Stop the process (SIGTERM, then SIGKILL); ``start()`` runs a new one on the same
        port."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self):
        """Kill the process at once (SIGKILL), as a crash does: its connections drop with no
        goodbye; ``start()`` runs a new one on the same port."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def thread_count(self):
        """Return how many OS threads the server process has now."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def thread_names(self):
        """Return how many OS threads of each name the server process has now."""
        names = []
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        return Counter(names)

    def fd_count(self):
        """Return how many file descriptors (sockets included) the server process holds."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self):
        """Return the server process's resident memory (``VmRSS``), in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"No VmRSS for process {self.pid}")

    def log(self):
        """Return what the process printed so far."""
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    def close(self):
        self.stop()
        self.log_file.close()


@contextlib.contextmanager
def live_server(server="daphne", application=APPLICATION, **env):
    """Run a server process (``"daphne"`` or ``"uvicorn"``) serving ``application`` for the
    block; ``env`` adds environment variables, e.g. ``EXECUTIONS_KEEPALIVE="0.3"``, or
    ``DJANGO_SETTINGS_MODULE`` for another site."""
    instance = LiveServer(server, application, **env)
    try:
        yield instance.start()
    finally:
        instance.close()


class RedisServer:
    """A redis-server of the test's own on a free port, which the test stops and starts
    again to see what a Redis restart does."""

    def __init__(self):
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://{HOST}:{self.port}/0"

    def start(self):
        """Start Redis (empty: it keeps nothing on disk) and return once it answers."""
        self.process = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(self.port), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    client.ping()
                    return self
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(SHUTDOWN_TIMEOUT)


@contextlib.contextmanager
def redis_server():
    """Run a Redis of the test's own for the block."""
    instance = RedisServer()
    try:
        yield instance.start()
    finally:
        instance.stop()


class Producer:
    """``manage.py runworkflow`` in its own process: the execution's only recorder."""

    def __init__(self, owner, inputs, workflow_id="wf_demo", **env):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runworkflow",
                workflow_id,
                "--owner",
                owner,
                "--inputs",
                json.dumps(inputs),
            ],
            cwd=BASE_DIR,
            env=process_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The command prints the execution id alone on its first line, before running it.
        self.execution_id = self.process.stdout.readline().strip()
        if not self.execution_id:
            self.process.wait(SHUTDOWN_TIMEOUT)
            stderr = self.process.stderr.read()
            raise RuntimeError(f"runworkflow printed no execution id:\n{stderr}")

    def wait(self, timeout=30.0):
        """Wait for the run to end; return what the command wrote to stderr."""
        _, stderr = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"runworkflow failed ({self.process.returncode}):\n{stderr}")
        return stderr

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
