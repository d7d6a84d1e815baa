"""REST: requests per second and latency of the executions API on one server process.

Sets up a user with ``--executions`` small executions (three node runs each, completed)
and drives, with wrk (``apt-get install -y wrk``) over ``--connections`` keep-alive
HTTP/1.1 connections from one wrk thread, for ``--warmup`` seconds unmeasured and then
``--duration`` seconds measured:

* ``detail``: ``GET /api/v1/executions/<id>`` of one of them, with the key;
* ``list``: ``GET /api/v1/executions`` (the first page: 20, the default), with the key;
* ``401``: ``GET /api/v1/executions/<id>`` with no key.

``--endpoint NAME`` (repeatable) measures only those, to compare two commits in runs
that alternate between them.

Verified in the same run: wrk's Lua hook checks every response's status (200, or 401
without a key) and that its body holds the execution's id (or ``"error"``); any other
response, socket error or timeout fails the run.

SQL queries and Redis round trips per request are counted outside the load, in this
process: one request per endpoint through Django's test client (the same middleware,
authentication and view) inside ``CaptureQueriesContext``, with redis-py's
``send_packed_command`` counted (one call per round trip, a pipeline being one).

    .venv/bin/python bench/rest_load.py --server uvicorn
"""

import argparse
import asyncio
import logging
import re
import resource
import secrets
import shutil
import sys
import tempfile
import time

from stream_load import (
    HOST,
    Server,
    SetupError,
    common_arguments,
    configure,
    create_fixtures,
    describe_server,
    finish,
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


def small_execution(username, nodes=3):
    """Record an execution with ``nodes`` node runs and complete it; return its id."""
    recorder = running_execution(username, total_nodes=nodes)
    for index in range(nodes):
        with recorder.node(f"node_{index + 1}", "http") as node:
            node.outputs = {"status": 200, "items": [index, index + 1]}
    recorder.complete({"nodes": nodes})
    return recorder.execution_id


def count_per_request(path, key):
    """Return ``(status, SQL queries, Redis round trips)`` of one GET of ``path`` through
    Django's test client (``key``: sent as X-API-Key if not None), after one uncounted
    (which connects to Redis)."""
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
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path, headers=headers)
    finally:
        redis.connection.AbstractConnection.send_packed_command = send
        logging.disable(logging.NOTSET)
        connections.close_all()
    return response.status_code, [q["sql"] for q in queries.captured_queries], len(round_trips)


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


async def measure(args, server, name, path, key, expected):
    await run_wrk(args, server, path, key, expected, args.warmup)
    spy = None
    if args.py_spy:
        output = py_spy_output(args.py_spy, name)
        spy = await start_py_spy(
            args.py_spy_bin, server.pid, output, subprocesses=server.workers > 1
        )
    workers = server.worker_pids()
    workers0 = [proc_cpu_seconds(pid) for pid in workers]
    cpu0, busy0 = server_cpu_seconds(server)[0], machine_busy_ticks()
    wall0 = time.monotonic()
    figures, wrk_cpu = await run_wrk(args, server, path, key, expected, args.duration)
    wall = time.monotonic() - wall0
    busy1 = machine_busy_ticks()
    server_cpu = server_cpu_seconds(server)[0] - cpu0
    # wrk's connections go to whichever worker accepts first: this says how they split.
    worker_cores = [
        round((proc_cpu_seconds(pid) - before) / wall, 2)
        for pid, before in zip(workers, workers0, strict=True)
    ]
    if spy is not None:
        await stop_py_spy(spy)
    seconds = figures["duration_us"] / 1e6
    return {
        "endpoint": name,
        "path": path,
        "requests": figures["requests"],
        "per_second": round(figures["requests"] / seconds, 1),
        **{
            f"{p}_ms": round(figures[f"{p}"] / 1000, 2)
            for p in ("p50", "p90", "p99", "max")
            if p in figures
        },
        "errors": figures["errors"],
        "unexpected": figures["unexpected"],
        "first_unexpected": figures["first_unexpected"],
        "server_cores": round(server_cpu / wall, 2),
        "worker_cores": worker_cores,
        "wrk_cores": round(wrk_cpu / wall, 2),
        "machine_busy": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3),
    }


async def bench(args, key, endpoints):
    server = Server.for_bench(args.server, workers=args.workers, label="rest_load")
    try:
        await server.start(key)
        return server, [
            await measure(args, server, name, path, sent_key, expected)
            for name, path, sent_key, expected in endpoints
        ]
    finally:
        server.stop()


def print_summary(args, server, results, counts):
    print()
    print(
        f"REST: {describe_server(server)}, {args.connections} keep-alive connections (wrk, one "
        f"thread), {args.duration:g} s after {args.warmup:g} s of warm-up"
    )
    header = ("endpoint", "requests/s", "p50 / p90 / p99 / max ms", "server", "wrk", "busy")
    header += ("SQL", "Redis")
    widths = (8, 11, 32, 7, 6, 6, 4, 5)
    print("  " + " ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for result in results:
        status, queries, round_trips = counts[result["endpoint"]]
        cells = (
            result["endpoint"],
            f"{result['per_second']:.0f}",
            f"{result['p50_ms']} / {result['p90_ms']} / {result['p99_ms']} / {result['max_ms']}",
            f"{result['server_cores']:.2f}",
            f"{result['wrk_cores']:.2f}",
            f"{result['machine_busy'] * 100:.0f} %",
            str(len(queries)),
            str(round_trips),
        )
        print("  " + " ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)))
    print(
        "  (server and wrk in cores, busy: the whole machine; SQL queries and Redis round "
        "trips: one request through Django's test client, CaptureQueriesContext)"
    )
    if server.workers > 1:
        split = ", ".join(
            f"{r['endpoint']} {' + '.join(f'{c:.2f}' for c in r['worker_cores'])}" for r in results
        )
        print(f"  cores per worker (the kernel hands wrk's connections to either): {split}")
    for name, (status, queries, _) in counts.items():
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
    return parse_with_workers(parser)


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
        server, results = asyncio.run(bench(args, key, endpoints))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    print_summary(args, server, results, counts)
    problems = [
        f"{r['endpoint']}: {r['errors']} socket errors, {r['unexpected']} unexpected responses"
        f" (first: {r['first_unexpected']})"
        for r in results
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
        "endpoints": results,
        "queries": {name: len(queries) for name, (_, queries, _) in counts.items()},
        "redis_round_trips": {name: trips for name, (_, _, trips) in counts.items()},
    }
    verified = "every response had the expected status and body; no socket error or timeout"
    return finish("rest", figures, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
