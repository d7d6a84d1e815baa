"""REST: requests per second and latency of the executions API on one server process.

Sets up a user with ``--executions`` small executions (three node runs each, completed)
and drives, with wrk (``apt-get install -y wrk``) over ``--connections`` keep-alive
HTTP/1.1 connections from one wrk thread, for ``--warmup`` seconds unmeasured and then
``--duration`` seconds measured:

* ``detail``: ``GET /api/v1/executions/<id>`` of one of them, with the key;
* ``list``: ``GET /api/v1/executions`` (the first page: 20, the default), with the key;
* ``401``: ``GET /api/v1/executions/<id>`` with no key.

``--endpoint NAME`` (repeatable) measures only those. ``--against CHECKOUT`` serves
another checkout of the project (another commit) beside this one, on the same database,
and splits ``--duration`` into ``--rounds`` bursts (10) that the two servers take in
turns: on a shared machine whose speed drifts by half within minutes, both are measured
through the same moments, which runs one after another are not.

Verified in the same run: wrk's Lua hook checks every response's status (200, or 401
without a key) and that its body holds the execution's id (or ``"error"``); any other
response, socket error or timeout fails the run.

Printed beside the rate: the server's CPU per request and its threads' context switches
per request (``/proc``); and, counted outside the load in this process, one request per
endpoint through Django's test client (the same middleware, authentication and view):
its SQL queries (``CaptureQueriesContext``), its round trips to PostgreSQL (the
ReadyForQuery messages in libpq's trace) and to Redis (redis-py's
``send_packed_command``, a pipeline being one).

    .venv/bin/python bench/rest_load.py --server uvicorn
    .venv/bin/python bench/rest_load.py --server uvicorn --endpoint detail --against ../before
"""

import argparse
import asyncio
import logging
import os
import re
import resource
import secrets
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager

from stream_load import (
    HOST,
    ROOT,
    Server,
    SetupError,
    common_arguments,
    configure,
    create_fixtures,
    describe_server,
    finish,
    in_turns,
    machine_busy_ticks,
    parse_with_workers,
    proc_cpu_seconds,
    py_spy_output,
    running_execution,
    server_cpu_seconds,
    start_py_spy,
    stop_py_spy,
    wait_for_quiet_machine,
)

# Checks every response and prints wrk's figures in a form this script reads.
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expected_status = tonumber(args[1])
  expected_text = args[2]
  unexpected = 0
  first_unexpected = ""
end

function response(status, headers, body)
  if status ~= expected_status or not string.find(body, expected_text, 1, true) then
    unexpected = unexpected + 1
    if first_unexpected == "" then
      first_unexpected = status .. " " .. string.sub(body, 1, 200)
    end
  end
end

function done(summary, latency, requests)
  local count, first = 0, ""
  for _, thread in ipairs(threads) do
    count = count + thread:get("unexpected")
    if first == "" then first = thread:get("first_unexpected") end
  end
  local errors = summary.errors
  io.write(string.format("bench requests %d duration_us %d\n", summary.requests,
    summary.duration))
  io.write(string.format("bench errors %d unexpected %d\n",
    errors.connect + errors.read + errors.write + errors.timeout, count))
  io.write(string.format("bench latency_us p50 %d p90 %d p99 %d max %d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  io.write("bench first_unexpected " .. first .. "\n")
end
"""


ENDPOINTS = ("detail", "list", "401")
PERCENTILES = ("p50", "p90", "p99", "max")


def small_execution(username, nodes=3):
    """Record an execution with ``nodes`` node runs and complete it; return its id."""
    recorder = running_execution(username, total_nodes=nodes)
    for index in range(nodes):
        with recorder.node(f"node_{index + 1}", "http") as node:
            node.outputs = {"status": 200, "items": [index, index + 1]}
    recorder.complete({"nodes": nodes})
    return recorder.execution_id


@contextmanager
def postgresql_round_trips(connection):
    """Count the round trips of ``connection`` (a Django connection on psycopg 3) in the
    block, into the list it yields: the ReadyForQuery messages in libpq's trace, one for
    each query sent alone and one for each pipeline's sync. A connection the block opens
    is traced from when Django has it, after the pool's check."""
    from django.db.backends.signals import connection_created
    from psycopg import pq

    counted, traced = [], []  # traced: (pgconn, trace file)
    with ExitStack() as files:

        def trace(pgconn):
            file = files.enter_context(tempfile.TemporaryFile())
            pgconn.trace(file.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            traced.append((pgconn, file))

        def on_connect(sender, connection, **kwargs):
            if connection is watched:
                trace(connection.connection.pgconn)

        watched = connection
        if connection.connection is not None:
            trace(connection.connection.pgconn)
        connection_created.connect(on_connect, weak=False)
        try:
            yield counted
        finally:
            connection_created.disconnect(on_connect)
            total = 0
            for pgconn, file in traced:
                pgconn.untrace()
                file.seek(0)
                total += file.read().count(b"\tReadyForQuery")
            counted.append(total)


def count_per_request(path, key):
    """Return ``(status, SQL queries, PostgreSQL round trips, Redis round trips)`` of one
    GET of ``path`` through Django's test client (``key``: sent as X-API-Key if not None),
    after one uncounted (which connects to Redis)."""
    import redis
    from django.db import connection, connections
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    round_trips = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        round_trips.append(command)
        return send(self, command, check_health)

    headers = {} if key is None else {"X-API-Key": key}
    client = Client(HTTP_HOST=HOST)
    logging.disable(logging.WARNING)  # Django's "Unauthorized: ..." of the 401
    client.get(path, headers=headers)
    redis.connection.AbstractConnection.send_packed_command = counted
    try:
        with (
            CaptureQueriesContext(connection) as queries,
            postgresql_round_trips(connection) as postgresql,
        ):
            response = client.get(path, headers=headers)
    finally:
        redis.connection.AbstractConnection.send_packed_command = send
        logging.disable(logging.NOTSET)
        connections.close_all()
    sql = [q["sql"] for q in queries.captured_queries]
    return response.status_code, sql, postgresql[0], len(round_trips)


async def run_wrk(args, server, path, key, expected, seconds):
    """Run wrk on ``path`` for ``seconds``; return its figures, and its CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="rest_load_") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        command = [args.wrk, "-t1", f"-c{args.connections}", f"-d{seconds}s"]
        command += ["--timeout", "5s", "-s", script.name]
        if key is not None:
            command += ["-H", f"X-API-Key: {key}"]
        command += [f"http://{HOST}:{server.port}{path}", "--", *expected]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(wrk.communicate(), seconds + 60)
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = output.decode()
    lines = " ".join(re.findall(r"^bench (?!first_unexpected)(.*)$", text, re.M))
    figures = dict(re.findall(r"(\w+) (\d+)", lines))
    if "requests" not in figures:
        raise SetupError(f"wrk failed:\n{text[-2000:]}")
    figures = {name: int(value) for name, value in figures.items()}
    first = re.search(r"^bench first_unexpected (.*)$", text, re.M)
    figures["first_unexpected"] = first.group(1) if first else ""
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    return figures, cpu


def context_switches(pids):
    """The context switches of every thread of ``pids`` so far: each wait on a socket, a
    lock or the GIL that let another thread run."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
    return total


async def burst(args, server, path, key, expected, seconds):
    """Load ``server`` with wrk for ``seconds``; return wrk's figures and what it cost."""
    workers = server.worker_pids()
    workers0 = [proc_cpu_seconds(pid) for pid in workers]
    switches0 = context_switches(server.pids())
    cpu0, busy0 = server_cpu_seconds(server)[0], machine_busy_ticks()
    wall0 = time.monotonic()
    figures, wrk_cpu = await run_wrk(args, server, path, key, expected, seconds)
    wall = time.monotonic() - wall0
    busy1 = machine_busy_ticks()
    return {
        "figures": figures,
        "wall": wall,
        "server_cpu": server_cpu_seconds(server)[0] - cpu0,
        "switches": context_switches(server.pids()) - switches0,
        "worker_cpu": [
            proc_cpu_seconds(pid) - before for pid, before in zip(workers, workers0, strict=True)
        ],
        "wrk_cpu": wrk_cpu,
        "busy": (busy1[0] - busy0[0], busy1[1] - busy0[1]),
    }


def result_of(name, path, bursts):
    """One endpoint's figures on one server from its ``bursts`` (latency percentiles only
    from one burst: wrk's cannot be merged)."""
    requests = sum(b["figures"]["requests"] for b in bursts)
    seconds = sum(b["figures"]["duration_us"] for b in bursts) / 1e6
    wall = sum(b["wall"] for b in bursts)
    server_cpu = sum(b["server_cpu"] for b in bursts)
    unexpected = [b["figures"] for b in bursts if b["figures"]["unexpected"]]
    return {
        "endpoint": name,
        "path": path,
        "requests": requests,
        "per_second": round(requests / seconds, 1),
        "per_burst": [
            round(b["figures"]["requests"] / b["figures"]["duration_us"] * 1e6) for b in bursts
        ],
        **(
            {f"{p}_ms": round(bursts[0]["figures"][p] / 1000, 2) for p in PERCENTILES}
            if len(bursts) == 1
            else {}
        ),
        "errors": sum(b["figures"]["errors"] for b in bursts),
        "unexpected": sum(b["figures"]["unexpected"] for b in bursts),
        "first_unexpected": unexpected[0]["first_unexpected"] if unexpected else "",
        "server_cores": round(server_cpu / wall, 2),
        "server_ms_per_request": round(1000 * server_cpu / max(requests, 1), 2),
        "switches_per_request": round(sum(b["switches"] for b in bursts) / max(requests, 1), 1),
        # wrk's connections go to whichever worker accepts first: this says how they split.
        "worker_cores": [
            round(sum(cpu) / wall, 2)
            for cpu in zip(*(b["worker_cpu"] for b in bursts), strict=True)
        ],
        "wrk_cores": round(sum(b["wrk_cpu"] for b in bursts) / wall, 2),
        "machine_busy": round(
            sum(b["busy"][0] for b in bursts) / max(sum(b["busy"][1] for b in bursts), 1), 3
        ),
    }


async def measure(args, servers, name, path, key, expected):
    """Return each server's figures for one endpoint: after a warm-up of each, ``--rounds``
    bursts that share ``--duration``, the servers taking turns (each round reversing the
    order), so that two checkouts are measured through the same moments of the machine."""
    for server in servers:
        await run_wrk(args, server, path, key, expected, args.warmup)
    spies = []
    if args.py_spy:
        for server in servers:
            output = py_spy_output(args.py_spy, name if server is servers[0] else f"{name}-against")
            spies.append(
                await start_py_spy(
                    args.py_spy_bin, server.pid, output, subprocesses=server.workers > 1
                )
            )
    bursts = {server: [] for server in servers}
    seconds = max(args.duration // args.rounds, 1)  # wrk takes whole seconds
    for server in in_turns(servers, args.rounds):
        bursts[server].append(await burst(args, server, path, key, expected, seconds))
    for spy in spies:
        await stop_py_spy(spy)
    return [result_of(name, path, bursts[server]) for server in servers]


async def bench(args, key, endpoints):
    roots = [ROOT, *([args.against] if args.against else [])]
    servers = [
        Server.for_bench(args.server, workers=args.workers, label="rest_load", root=root)
        for root in roots
    ]
    try:
        for server in servers:
            await server.start(key)
        return servers, [
            await measure(args, servers, name, path, sent_key, expected)
            for name, path, sent_key, expected in endpoints
        ]
    finally:
        for server in servers:
            server.stop()


def print_summary(args, servers, results, counts):
    print()
    against = f", against {args.against} (pid {servers[1].pid})" if args.against else ""
    turns = f" in {args.rounds} bursts each, taking turns" if args.rounds > 1 else ""
    print(
        f"REST: {describe_server(servers[0])}{against}, {args.connections} keep-alive "
        f"connections (wrk, one thread), {args.duration:g} s{turns} after {args.warmup:g} s "
        "of warm-up"
    )
    header = ("endpoint", "requests/s", "p50 / p90 / p99 / max ms", "server", "ms/req")
    header += ("switches", "wrk", "busy", "SQL", "PG", "Redis")
    widths = (8, 11, 32, 7, 6, 8, 5, 5, 3, 3, 5)
    print("  " + " ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for each in results:
        for server, result in zip(servers, each, strict=True):
            status, queries, postgresql, redis = counts[result["endpoint"]]
            if args.rounds > 1:
                latency = f"bursts {min(result['per_burst'])}-{max(result['per_burst'])} /s"
            else:
                latency = " / ".join(str(result[f"{p}_ms"]) for p in PERCENTILES)
            cells = (
                result["endpoint"] if server is servers[0] else "  against",
                f"{result['per_second']:.0f}",
                latency,
                f"{result['server_cores']:.2f}",
                f"{result['server_ms_per_request']:.2f}",
                f"{result['switches_per_request']:.1f}",
                f"{result['wrk_cores']:.2f}",
                f"{result['machine_busy'] * 100:.0f} %",
                *((str(len(queries)), str(postgresql), str(redis)) if server is servers[0] else ()),
            )
            print("  " + " ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=False)))
    print(
        "  (server and wrk in cores, ms/req: the server's CPU per request, switches: its "
        "threads' context switches per request, busy: the whole machine; SQL queries and "
        "round trips to PostgreSQL (after the pool's check) and Redis: one request of this "
        "checkout through Django's test client)"
    )
    if servers[0].workers > 1:
        split = ", ".join(
            f"{r['endpoint']}{'' if server is servers[0] else ' against'} "
            f"{' + '.join(f'{c:.2f}' for c in r['worker_cores'])}"
            for each in results
            for server, r in zip(servers, each, strict=True)
        )
        print(f"  cores per worker (the kernel hands wrk's connections to either): {split}")
    for name, (status, queries, *_) in counts.items():
        print(f"  queries of one {name} request (HTTP {status}):")
        for sql in queries:
            print(f"    {sql[:150]}{'...' if len(sql) > 150 else ''}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, py_spy="profile the server during each measured run (OUT-NAME.ext)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=10, help="seconds measured")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before, unmeasured")
    parser.add_argument("--executions", type=int, default=25, help="in the user's list")
    parser.add_argument(
        "--endpoint",
        action="append",
        choices=ENDPOINTS,
        help="measure only this endpoint (repeatable; default: all three)",
    )
    return parse_with_workers(parser, rounds=("bursts per server that share --duration", 10))


def main():
    args = parse_args()
    args.wrk = shutil.which("wrk")
    if args.wrk is None:
        print("setup failed: wrk is missing; install it: apt-get install -y wrk", file=sys.stderr)
        return 2
    try:
        configure(args)
        username = f"bench-rest-{secrets.token_hex(4)}"  # a list of its own executions
        key, _ = create_fixtures(username)
        ids = [small_execution(username) for _ in range(args.executions)]
        detail = f"/api/v1/executions/{ids[0]}"
        endpoints = [
            ("detail", detail, key, ("200", ids[0])),
            ("list", "/api/v1/executions", key, ("200", ids[-1])),
            ("401", detail, None, ("401", '"error"')),
        ]
        endpoints = [e for e in endpoints if e[0] in (args.endpoint or ENDPOINTS)]
        counts = {name: count_per_request(path, sent) for name, path, sent, _ in endpoints}
        background = wait_for_quiet_machine(args.quiet_wait)
        servers, results = asyncio.run(bench(args, key, endpoints))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    print_summary(args, servers, results, counts)
    problems = [
        f"{r['endpoint']}: {r['errors']} socket errors, {r['unexpected']} unexpected responses"
        f" (first: {r['first_unexpected']})"
        for each in results
        for r in each
        if r["errors"] or r["unexpected"]
    ]
    expected_status = {"detail": 200, "list": 200, "401": 401}
    problems += [
        f"{name}: HTTP {status} through the test client"
        for name, (status, *_) in counts.items()
        if status != expected_status[name]
    ]
    figures = {
        "server": args.server,
        "connections": args.connections,
        "duration": args.duration,
        "endpoints": [this for this, *_ in results],
        **(
            {"against": str(args.against), "against_endpoints": [r for _, r in results]}
            if args.against
            else {}
        ),
        "rounds": args.rounds,
        "queries": {name: len(queries) for name, (_, queries, *_) in counts.items()},
        "postgresql_round_trips": {name: trips for name, (_, _, trips, _) in counts.items()},
        "redis_round_trips": {name: trips for name, (*_, trips) in counts.items()},
    }
    verified = "every response had the expected status and body; no socket error or timeout"
    return finish("rest", figures, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
