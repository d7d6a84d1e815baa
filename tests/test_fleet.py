"""The whole system as a fleet on loopback: Debian's nginx, running the shipped
``docs/nginx/flowmaestro.conf``, in front of three server processes (uvicorn and daphne)
and two task workers (``manage.py db_worker``), on this machine's PostgreSQL and Redis.

Executions are started through the API, through nginx, and run on the workers; hundreds
of streams, opened through nginx as browsers' EventSources, must each receive every event
of their execution exactly once and in order while one server process is stopped and
started again (its clients resume on the others with ``Last-Event-ID``) and while a worker
is killed mid-execution (that execution fails, with a clear error; the others complete).
"""

import re
import shutil
import signal
import subprocess
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.apps import apps

from executions.models import Event, Execution
from executions.recorder import ExecutionRecorder
from tests.fleet import NGINX, Clients, EventSource, Fleet, Nginx, socket_count
from tests.live_server import BASE_DIR, LiveStream, events_url, ids_of
from tests.runs import completed_run

pytestmark = pytest.mark.django_db(transaction=True)

if not NGINX.exists():
    pytest.skip(
        f"{NGINX} is missing: the fleet tests run Debian's nginx. "
        "`make test` installs it (apt-get install nginx).",
        allow_module_level=True,
    )

# uvicorn, the server the docs recommend for many streams, twice; daphne once, so that
# both servers are proven behind nginx's keep-alive connections and both are stopped.
SERVERS = ("uvicorn", "daphne", "uvicorn")
WORKERS = 2
ENV = {
    "EXECUTIONS_KEEPALIVE": "2",
    # Clients reconnect a quarter of a second after a stream ends (the stream's retry:).
    "EXECUTIONS_RETRY_MS": "250",
    # A killed worker's execution is failed within seconds, not the default half-minute.
    "EXECUTIONS_HEARTBEAT_INTERVAL": "0.2",
    "EXECUTIONS_HEARTBEAT_TIMEOUT": "2",
    "APIKEYS_RATE_LIMIT_KEY_PREFIX": f"test-rl:fleet:{uuid.uuid4().hex}",
}
EXECUTIONS = 6
STREAMS_PER_EXECUTION = 55  # 330 streams, under each key's limit of open streams (100)
NODES = 20
INPUTS = {"nodes": NODES, "delay_ms": 200}  # 62 events over about 4 s
# How long a step may take; far above what it takes.
TIMEOUT = 60.0
STATIC_ROOT = BASE_DIR / "executions" / "static"
OPENSSL, CURL = shutil.which("openssl"), shutil.which("curl")
ABANDONED = re.compile(
    r"The worker running this execution stopped \(no heartbeat since "
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\): it was killed or lost\."
)


@pytest.fixture(scope="module")
def fleet(django_db_setup, tmp_path_factory):
    with Fleet(tmp_path_factory.mktemp("fleet"), SERVERS, WORKERS, STATIC_ROOT, **ENV) as fleet:
        yield fleet


@pytest.fixture
def running_fleet(fleet):
    """The fleet, with whatever an earlier test stopped started again."""
    return fleet.ensure_running()


@pytest.fixture
def api(running_fleet):
    with httpx.Client(base_url=running_fleet.nginx.url, timeout=TIMEOUT) as client:
        yield client


def wait_until(predicate, what, timeout=TIMEOUT):
    """Return ``predicate()`` once it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"Still waiting after {timeout} s: {what}"
        time.sleep(0.05)
    return found


def execute(api, key):
    answer = api.post(
        "/api/v1/workflows/wf_demo/execute", json={"inputs": INPUTS}, headers={"X-API-Key": key}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["data"]["execution_id"]


def token_url(api, execution_id, key):
    answer = api.post(f"/api/v1/executions/{execution_id}/stream-token", headers={"X-API-Key": key})
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]["url"]


def sources_for(nginx, execution_id, key, url_with_token):
    """Streams of one execution through nginx: half with the key in a header (a fetch-based
    client, the SDKs), half with the stream token in the URL (a browser's EventSource)."""
    # The token's URL is built on the Host that nginx passed on, port included.
    path_with_token = url_with_token.removeprefix(nginx.url)
    assert path_with_token.startswith(events_url(execution_id) + "?token=")
    return [
        EventSource(nginx.port, events_url(execution_id), {"X-API-Key": key})
        if number % 2
        else EventSource(nginx.port, path_with_token)
        for number in range(STREAMS_PER_EXECUTION)
    ]


def logged_events(execution_id):
    """The execution's events as a stream must deliver them: (id, event, data)."""
    rows = Event.objects.filter(execution_id=execution_id).order_by("seq")
    return [(str(seq), kind, data) for seq, kind, data in rows.values_list("seq", "type", "data")]


def task_running_on(worker):
    """The execution whose task ``worker`` runs now, once it is under way, or None."""
    DBTaskResult = apps.get_model("django_tasks_database", "DBTaskResult")
    for task in DBTaskResult.objects.filter(status="RUNNING"):
        if task.worker_ids and task.worker_ids[-1] == worker.worker_id:
            execution_id = task.args_kwargs["args"][0]
            if Execution.objects.filter(pk=execution_id, status="running", last_seq__gte=3):
                return execution_id
    return None


def served_by(line, port):
    return line.rsplit(" ", 1)[-1] == f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("stop_signal", "victim"),
    [(signal.SIGTERM, 0), (signal.SIGTERM, 1), (signal.SIGKILL, 2)],
    ids=["sigterm-uvicorn", "sigterm-daphne", "sigkill-uvicorn"],
)
def test_every_stream_gets_every_event_once_while_a_server_restarts_and_a_worker_dies(
    running_fleet, api, make_key, stop_signal, victim
):
    fleet, nginx = running_fleet, running_fleet.nginx
    keys = [
        make_key(rate_limit_per_minute=100_000, rate_limit_per_day=1_000_000)[1]
        for _ in range(EXECUTIONS)
    ]
    executions = [execute(api, key) for key in keys]
    token_urls = {
        execution_id: token_url(api, execution_id, key)
        for execution_id, key in zip(executions, keys, strict=True)
    }
    tokens = [parse_qs(urlsplit(url).query)["token"][0] for url in token_urls.values()]
    sources = {
        execution_id: sources_for(nginx, execution_id, key, token_urls[execution_id])
        for execution_id, key in zip(executions, keys, strict=True)
    }
    every_source = [source for of_one in sources.values() for source in of_one]
    baseline = [socket_count(server.pid) for server in fleet.servers]
    log_start = nginx.access_log_size()
    clients = Clients(every_source, timeout=TIMEOUT).start()
    try:
        wait_until(lambda: all(source.opened for source in every_source), "every stream open")
        # nginx spread the streams over the three processes (about 110 each).
        held = [socket_count(s.pid) - base for s, base in zip(fleet.servers, baseline, strict=True)]
        assert min(held) >= 30, f"open sockets per server process, beyond the baseline: {held}"

        # A server process stops mid-run, and starts again on its port.
        wait_until(
            lambda: Execution.objects.filter(pk__in=executions, status="running", last_seq__gte=8),
            "an execution under way",
        )
        stopped = fleet.servers[victim]
        stopped.process.send_signal(stop_signal)
        # After SIGTERM the process ends its streams and exits by itself.
        stopped.process.wait(TIMEOUT)
        exit_code = stopped.process.returncode
        stopped.start()
        restarted_at = nginx.access_log_size()

        # A worker is killed in the middle of an execution; its supervisor starts it again.
        worker = fleet.workers[0]
        abandoned = wait_until(lambda: task_running_on(worker), "an execution on the worker")
        worker.kill()
        worker.start()

        unfinished = clients.wait()
    finally:
        clients.close()
    assert clients.error is None, repr(clients.error)
    assert not unfinished, [(s.path, s.connections[-3:]) for s in unfinished[:5]]

    # Every stream received every event of its execution, once, in order, to the terminal
    # event, over however many connections it took.
    for execution_id, of_one in sources.items():
        expected = logged_events(execution_id)
        assert expected[-1][1] in EventSource.TERMINAL
        for source in of_one:
            assert source.events == expected, (execution_id, source.connections)
            assert source.connections[-1][2] == "terminal"
    # nginx refused no connection (no 502, no 504): a browser would not have retried it.
    statuses = {status for source in every_source for _, status, _ in source.connections}
    assert statuses == {200}, statuses
    # The stopped process's clients resumed on the others, each from the id it had.
    resumed = [source for source in every_source if len(source.connections) > 1]
    assert len(resumed) >= 30, len(resumed)
    ends = {outcome for source in resumed for _, _, outcome in source.connections[:-1]}
    if stop_signal == signal.SIGTERM:
        # It exited by itself, not killed (uvicorn raises the SIGTERM it caught again once
        # its shutdown is done), and each of its streams ended cleanly, none cut off.
        assert exit_code in (0, -signal.SIGTERM), exit_code
        assert ends == {"end"}, ends
    else:
        assert exit_code == -signal.SIGKILL

    # The killed worker's execution failed, saying why; every other one completed.
    for execution_id in executions:
        answer = api.get(f"/api/v1/executions/{execution_id}", headers={"X-API-Key": keys[0]})
        execution = answer.json()["data"]
        if execution_id == abandoned:
            assert execution["status"] == "failed", execution
            assert ABANDONED.fullmatch(execution["error"]), execution["error"]
        else:
            assert execution["status"] == "completed", execution
            assert execution["outputs"]["nodes_run"] == NODES

    # nginx logged every stream, by its path alone: no token, no query string.
    lines = nginx.access_lines(log_start)
    streamed = [line for line in lines if '/events HTTP/1.1" 200 ' in line]
    assert len(streamed) >= len(every_source)
    for server in fleet.servers:
        assert any(served_by(line, server.port) for line in streamed), server.port
    # nginx may log a request after its client has the answer: the lines may include the
    # stream-token requests, whose path says "token"; what must not be there is a token.
    assert not [line for line in lines if "?" in line or any(t in line for t in tokens)]
    # Nor did its error log, though nginx refused or lost streams when the process stopped.
    errors = nginx.errors()
    assert "?token=" not in errors and not any(token in errors for token in tokens)

    # The restarted process is back in nginx's rotation once its fail_timeout has passed.
    def restarted_serves():
        api.get("/api/v1/workflows", headers={"X-API-Key": keys[0]})
        return any(served_by(line, stopped.port) for line in nginx.access_lines(restarted_at))

    wait_until(restarted_serves, "a request served by the restarted process", timeout=20)


def test_nginx_passes_each_event_at_once_and_serves_the_static_files(
    running_fleet, api, user, raw_key
):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_fleet")
    recorder.start()
    headers = {"X-API-Key": raw_key}
    with api.stream("GET", events_url(recorder.execution_id), headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        stream = LiveStream(response)
        stream.read_until(lambda body: ids_of(body) == [1])
        recorder.progress(completed_nodes=1, total_nodes=2)
        # The event reaches the client alone, long before any buffer of nginx's is full.
        stream.read_until(lambda body: ids_of(body) == [1, 2])
    recorder.complete({"ok": True})

    static = api.get("/static/executions/execution_live.js")
    assert static.status_code == 200
    assert static.content == (STATIC_ROOT / "executions" / "execution_live.js").read_bytes()
    assert "Expires" in static.headers


@pytest.mark.skipif(not (OPENSSL and CURL), reason="needs openssl and curl (with HTTP/2)")
def test_with_its_tls_lines_the_shipped_config_streams_over_http2(
    running_fleet, user, raw_key, tmp_path
):
    certificate, private_key = tmp_path / "certificate.pem", tmp_path / "private.key"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-keyout", private_key, "-out", certificate),
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "nginx").mkdir()
    upstreams = [server.port for server in running_fleet.servers]
    tls = Nginx(tmp_path / "nginx", upstreams, STATIC_ROOT, tls=(certificate, private_key))
    execution_id = completed_run(user)
    tls.start()
    try:
        streamed = subprocess.run(
            [
                *(CURL, "--silent", "--show-error", "--http2", "--insecure", "--max-time", "20"),
                *("--header", f"X-API-Key: {raw_key}", "--write-out", "\n%{http_version}"),
                tls.url + events_url(execution_id),
            ],
            check=True,
            capture_output=True,
        )
    finally:
        tls.stop()
    body, _, version = streamed.stdout.rpartition(b"\n")
    assert version == b"2"
    assert ids_of(body) == [int(seq) for seq, _, _ in logged_events(execution_id)]
