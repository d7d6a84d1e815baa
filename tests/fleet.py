"""A fleet on loopback for the end-to-end tests: Debian's nginx running the shipped
``docs/nginx/flowmaestro.conf`` in front of several server processes, task workers
(``manage.py db_worker``), and clients that read the streams as a browser's
``EventSource`` does.

    with Fleet(tmp_path, ("uvicorn", "daphne", "uvicorn"), workers=2) as fleet:
        httpx.post(fleet.nginx.url + "/api/v1/workflows/wf_demo/execute", ...)

Every process runs ``tests.server_settings`` on pytest-django's test database and the
tests' Redis (``tests.live_server.process_env``). nginx runs as the test's user, on a port
of its own, with its configuration, logs, pid and temporary files in the test's directory:
the system's ``/etc/nginx`` site and port 80 are never used.
"""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.live_server import (
    BASE_DIR,
    HOST,
    SHUTDOWN_TIMEOUT,
    STARTUP_TIMEOUT,
    LiveServer,
    free_port,
    process_env,
)

NGINX = Path("/usr/sbin/nginx")
NGINX_CONFIG = BASE_DIR / "docs" / "nginx" / "flowmaestro.conf"
# The values of the shipped file that the test replaces with its own; nothing else
# changes. Each must be found as often as said, so an edit of the file that moves one
# fails here rather than running something else.
LISTEN = "\n    listen 80;\n"
UPSTREAM_SERVERS = (
    "server 127.0.0.1:8001;",
    "server 127.0.0.1:8002;",
    "server 127.0.0.1:8003;",
)
# With TLS: the commented lines that serve HTTPS and HTTP/2, in place of "listen 80".
TLS_LINES = {
    "    # listen 443 ssl http2;": "    listen {host}:{port} ssl http2;",
    "    # ssl_certificate     /etc/ssl/certs/api.example.com.pem;": (
        "    ssl_certificate {certificate};"
    ),
    "    # ssl_certificate_key /etc/ssl/private/api.example.com.key;": (
        "    ssl_certificate_key {private_key};"
    ),
}
ACCESS_LOG = "/var/log/nginx/flowmaestro.access.log"
ERROR_LOG = "/var/log/nginx/flowmaestro.error.log"
STATIC_ROOT = "/srv/flowmaestro/staticfiles/"

# What Debian's /etc/nginx/nginx.conf gives the site file around it, with every path in
# the test's directory. A master process started as root runs its workers as the user
# that the "user" directive names; as anyone else, as itself.
MAIN_CONFIG = """\
{user}worker_processes 2;
events {{
    worker_connections 4096;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/flowmaestro.conf;
}}
"""


def substitute(text, old, new, count=1):
    if text.count(old) != count:
        raise AssertionError(f"{NGINX_CONFIG} must hold {old.strip()!r} {count} time(s).")
    return text.replace(old, new)


def site_config(listen_port, upstream_ports, access_log, error_log, static_root, tls=None):
    """The shipped configuration with the test's port, upstreams, logs and static root;
    with ``tls`` (a certificate and its private key), its TLS lines instead of port 80."""
    if len(upstream_ports) != len(UPSTREAM_SERVERS):
        raise ValueError(f"The shipped upstream has {len(UPSTREAM_SERVERS)} servers.")
    text = NGINX_CONFIG.read_text()
    if tls is None:
        text = substitute(text, LISTEN, f"\n    listen {HOST}:{listen_port};\n")
    else:
        text = substitute(text, LISTEN, "\n")
        certificate, private_key = tls
        for line, enabled in TLS_LINES.items():
            enabled = enabled.format(
                host=HOST, port=listen_port, certificate=certificate, private_key=private_key
            )
            text = substitute(text, line, enabled)
    for line, port in zip(UPSTREAM_SERVERS, upstream_ports, strict=True):
        text = substitute(text, line, f"server {HOST}:{port};")
    text = substitute(text, ACCESS_LOG, str(access_log))
    text = substitute(text, ERROR_LOG, str(error_log), count=2)  # the server's, the stream's
    return substitute(text, STATIC_ROOT, f"{static_root}/")


def wait_for_port(port, process, what):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at startup.")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {STARTUP_TIMEOUT} s.")


def stop_process(process, timeout=SHUTDOWN_TIMEOUT):
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def socket_count(pid):
    """Return how many sockets process ``pid`` holds open (its streams among them)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


class Nginx:
    """Debian's nginx running the shipped configuration in front of ``upstream_ports``,
    with everything it writes in ``directory``."""

    def __init__(self, directory, upstream_ports, static_root, tls=None):
        self.directory = Path(directory)
        self.port = free_port()
        self.scheme = "http" if tls is None else "https"
        self.access_log = self.directory / "access.log"
        self.error_log = self.directory / "error.log"
        self.site = self.directory / "flowmaestro.conf"
        self.main = self.directory / "nginx.conf"
        self.site.write_text(
            site_config(
                self.port, upstream_ports, self.access_log, self.error_log, static_root, tls
            )
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.main.write_text(MAIN_CONFIG.format(user=user, prefix=self.directory))
        self.process = None

    @property
    def url(self):
        return f"{self.scheme}://{HOST}:{self.port}"

    def command(self, *options):
        return [
            str(NGINX),
            *("-p", str(self.directory), "-c", str(self.main), "-e", str(self.error_log)),
            *("-g", f"daemon off; pid {self.directory / 'nginx.pid'};"),
            *options,
        ]

    def start(self):
        checked = subprocess.run(self.command("-t", "-q"), capture_output=True, text=True)
        if checked.returncode:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, self.process, "nginx")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.errors()}") from None
        return self

    def stop(self):
        stop_process(self.process)  # SIGTERM: nginx's fast shutdown, streams and all

    def access_lines(self, start=0):
        """Return the access log's lines from byte ``start`` on."""
        with open(self.access_log, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace").splitlines()

    def access_log_size(self):
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def errors(self):
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""


class TaskWorker:
    """``manage.py db_worker`` on the test database; each start has a worker id of its own,
    which the queue's rows record (``DBTaskResult.worker_ids``)."""

    def __init__(self, name, **env):
        self.name = name
        self.env = process_env(**env)
        self.starts = 0
        self.worker_id = None
        self.process = None
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def start(self):
        self.starts += 1
        self.worker_id = f"{self.name}-{self.starts}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("manage.py", "db_worker", "--interval", "0.1"),
                *("--no-reload", "--no-startup-delay", "--worker-id", self.worker_id),
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self):
        """Kill the worker at once (SIGKILL), as a crash or the OOM killer does."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def log(self):
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    def close(self):
        stop_process(self.process)
        self.log_file.close()


class Fleet:
    """nginx, one server process per entry of ``servers`` (``"uvicorn"``, ``"daphne"``) and
    ``workers`` task workers, all with the environment ``env``."""

    def __init__(self, directory, servers, workers, static_root, **env):
        self.servers = [LiveServer(kind, **env) for kind in servers]
        self.workers = [TaskWorker(f"worker{number}", **env) for number in range(workers)]
        self.nginx = Nginx(directory, [server.port for server in self.servers], static_root)

    def ensure_running(self):
        """Start, all at once, whatever is not running (everything, the first time)."""
        starts = [
            server.start
            for server in self.servers
            if server.process is None or server.process.poll() is not None
        ]
        starts += [worker.start for worker in self.workers if not worker.running]
        if self.nginx.process is None or self.nginx.process.poll() is not None:
            starts.append(self.nginx.start)
        with ThreadPoolExecutor(len(starts) or 1) as pool:
            for started in [pool.submit(start) for start in starts]:
                started.result()
        return self

    def close(self):
        self.nginx.stop()
        for process in [*self.servers, *self.workers]:
            process.close()

    def __enter__(self):
        try:
            return self.ensure_running()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info):
        self.close()


class EventSource:
    """One client of an event stream that behaves as a browser's ``EventSource``.

    It sends ``Last-Event-ID`` with the last id it received (kept across connections, as
    browsers do), and reconnects ``retry`` ms (the stream's ``retry:``) after the response
    ends or the connection fails. It stops for good at a ``204``, or at any other status
    than ``200``, which a browser does not retry either; and at the terminal event, where
    the live page closes its EventSource.
    """

    TERMINAL = frozenset({"execution:completed", "execution:failed", "execution:cancelled"})

    def __init__(self, port, path, headers=None):
        self.port, self.path, self.headers = port, path, headers or {}
        self.last_event_id = ""
        self.retry = 3.0
        self.events = []  # (id, event, data) of every event received, in order
        # One (Last-Event-ID sent, status, how it ended) per connection; it ended with
        # "terminal", "end" (the response ended cleanly), "error" or "closed" (204 or
        # another status).
        self.connections = []
        self.opened = False  # a first connection got its "connected"
        self.finished = False
        self.gate = None

    async def run(self, gate):
        """Follow the stream to its terminal event; ``gate`` (a semaphore) is held until
        the first connection is open, or has failed."""
        await gate.acquire()
        self.gate = gate
        outcome = await self.connect()
        while outcome not in ("terminal", "closed"):
            await asyncio.sleep(self.retry)
            outcome = await self.connect()
        self.finished = True

    async def connect(self):
        sent = self.last_event_id
        status, outcome = None, "error"
        writer = None
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            writer.write(self.request(sent))
            status, chunked = await self.read_head(reader)
            if status != 200:
                outcome = "closed"
            else:
                outcome = await self.read_body(reader, chunked)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            outcome = "error"
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self.connections.append((sent, status, outcome))
            self.open_gate()
        return outcome

    def open_gate(self):
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.release()

    def request(self, last_event_id):
        headers = {
            "Host": f"{HOST}:{self.port}",
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            **self.headers,
        }
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"GET {self.path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode()

    @staticmethod
    async def read_head(reader):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        chunked = any(
            line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
            for line in head[1:]
        )
        return status, chunked

    async def read_body(self, reader, chunked):
        """Parse the stream as it comes; return how it ended."""
        parser = self.parse()
        next(parser)
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    return "end"
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return "end"
            if parser.send(data):
                return "terminal"

    def parse(self):
        """A generator fed the body's bytes: it dispatches events as the WHATWG parser
        does and yields whether the terminal event came."""
        buffer = b""
        event_type, data, event_id = "", [], self.last_event_id
        terminal = False
        while True:
            buffer += yield terminal
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line == "":
                    self.last_event_id = event_id
                    if data:
                        self.dispatch(event_type or "message", "\n".join(data))
                        terminal = terminal or event_type in self.TERMINAL
                    event_type, data = "", []
                    continue
                if line.startswith(":"):
                    continue  # a comment: the keepalive
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event_type = value
                elif name == "data":
                    data.append(value)
                elif name == "id" and "\0" not in value:
                    event_id = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value) / 1000

    def dispatch(self, event_type, data):
        if event_type == "connected":
            self.opened = True
            self.open_gate()
        else:
            self.events.append((self.last_event_id, event_type, data))


class Clients:
    """Event sources run on an event loop of their own, in a thread, while the test
    stops and starts processes; at most ``concurrency`` first connections at once."""

    def __init__(self, sources, concurrency=50, timeout=60.0):
        self.sources, self.concurrency, self.timeout = sources, concurrency, timeout
        self.loop = None
        self.task = None
        self.thread = threading.Thread(target=self.main, name="fleet-clients", daemon=True)
        self.error = None

    def main(self):
        try:
            asyncio.run(self.follow())
        except BaseException as exc:  # reported by the test, from wait()'s caller
            self.error = exc

    async def follow(self):
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        gate = asyncio.Semaphore(self.concurrency)
        async with asyncio.timeout(self.timeout):
            await asyncio.gather(*(source.run(gate) for source in self.sources))

    def start(self):
        self.thread.start()
        return self

    def wait(self):
        """Wait for every source to finish (or for the timeout); return the unfinished."""
        self.thread.join(self.timeout + 5)
        return [source for source in self.sources if not source.finished]

    def close(self):
        if self.thread.is_alive() and self.loop is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)
