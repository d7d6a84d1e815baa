"""Graceful shutdown: how long a server process asked to stop (SIGTERM) takes to end its
open streams, and then to exit.

One server process holds ``--streams`` (1,000) open streams, spread over
``--executions`` (10) running executions, each with its history (``execution:started``)
replayed; then it gets SIGTERM, as a supervisor sends it in a rolling deploy. The app
ends every stream at once (``EXECUTIONS["END_STREAMS_ON_SIGTERM"]``), so its clients can
reconnect to another process, and the server's own graceful shutdown, which waits for
every response to finish, has nothing left to wait for. Figures, from the signal: when
the streams' responses ended (the first, p50, p99, the last), how many ended cleanly
(the chunked body's last chunk came before the connection closed: a client sees the end
of a response, not an error) and when the process exited.

Verified in the same run: every stream opened, received ``execution:started`` and
nothing else (no event lost or doubled), and ended cleanly.

    .venv/bin/python bench/shutdown.py --server uvicorn
    .venv/bin/python bench/shutdown.py --server daphne

Each key may hold ``EXECUTIONS["MAX_STREAMS_PER_KEY"]`` (100) streams open, so each
execution has a key of its own.
"""

import argparse
import asyncio
import math
import signal
import sys
import time

from stream_load import (
    HOST,
    Server,
    SetupError,
    Stream,
    common_arguments,
    complete_execution,
    configure,
    create_fixtures,
    delivery_problems,
    describe_server,
    finish,
    percentile,
    print_tallies,
    row,
    running_execution,
    stream_request,
    wait_for_quiet_machine,
    wait_replayed,
)

USERNAME = "bench"


class ClosingStream(Stream):
    """A stream that notes when its response ended and whether it ended cleanly."""

    ended_at = None
    clean = False

    def finish(self, error=None):
        if not self.done.done():
            self.ended_at = time.monotonic()
        super().finish(error)

    def connection_lost(self, exc):
        # The last chunk sets ``done`` before the connection closes; a response cut short
        # gets here first.
        self.clean = self.done.done() and self.error is None
        super().connection_lost(exc)


def more_keys(count):
    """Return ``count`` new ``executions:read`` keys of the benchmark's user."""
    from django.contrib.auth import get_user_model
    from django.db import connections

    from apikeys.models import APIKey

    user = get_user_model().objects.get(username=USERNAME)
    keys = [
        APIKey.objects.create_key(
            owner=user,
            name=f"shutdown {number}",
            scopes=["executions:read"],
            rate_limit_per_minute=100_000_000,
            rate_limit_per_day=1_000_000_000,
        )[1]
        for number in range(count)
    ]
    connections.close_all()
    return keys


async def open_one(port, path, key, patience):
    """Open one stream; return it once it has had ``connected``, or None."""
    loop = asyncio.get_running_loop()
    request = stream_request(port, path, key)
    try:
        _, stream = await loop.create_connection(lambda: ClosingStream(request), HOST, port)
        await asyncio.wait_for(asyncio.shield(stream.connected), patience)
    except (OSError, TimeoutError):
        return None
    return stream if stream.is_connected else None


async def open_all(args, server, plan):
    """Open the streams of ``plan`` (``[(path, key, count)]``), at most
    ``--connect-concurrency`` at once; return those that opened."""
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def one(path, key):
        async with gate:
            return await open_one(server.port, path, key, args.connect_timeout)

    opened = await asyncio.gather(
        *(one(path, key) for path, key, count in plan for _ in range(count))
    )
    streams = [stream for stream in opened if stream is not None]
    await wait_replayed(streams, args.connect_timeout)
    return streams


async def wait_exit(process, patience):
    """Return the time the process exited, or None if it did not within ``patience``."""
    deadline = time.monotonic() + patience
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.002)
    return time.monotonic()


async def bench(args, keys, executions):
    server = Server.for_bench(args.server, label="shutdown")
    per_execution = math.ceil(args.streams / len(executions))
    plan = []
    left = args.streams
    for key, recorder in zip(keys, executions, strict=True):
        count = min(per_execution, left)
        plan.append((f"/api/v1/executions/{recorder.execution_id}/events", key, count))
        left -= count
    try:
        await server.start(keys[0])
        streams = await open_all(args, server, plan)
        await asyncio.sleep(args.settle)
        still_open = sum(1 for stream in streams if not stream.done.done())
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exited = await wait_exit(server.process, args.patience)
        pending = [stream.done for stream in streams if not stream.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=args.patience)
        await asyncio.sleep(0.2)  # the connections' closes, after their last chunks
    finally:
        server.stop()
    return server, streams, still_open, signalled, exited


def figures_of(args, server, streams, still_open, signalled, exited):
    ended = sorted(stream.ended_at - signalled for stream in streams if stream.ended_at)
    return {
        "server": server.name,
        "streams": args.streams,
        "executions": args.executions,
        "open_at_sigterm": still_open,
        "ended_clean": sum(1 for stream in streams if stream.clean),
        "ended_cut": sum(1 for stream in streams if stream.ended_at and not stream.clean),
        "still_open": sum(1 for stream in streams if not stream.ended_at),
        **{
            f"ended_{name}_ms": round(percentile(ended, fraction) * 1000, 1)
            for name, fraction in (("first", 0.0), ("p50", 0.5), ("p99", 0.99), ("last", 1.0))
        },
        "exited_ms": None if exited is None else round((exited - signalled) * 1000, 1),
    }


def print_summary(server, figures):
    print()
    print(f"Graceful shutdown: {describe_server(server)}, SIGTERM with open streams")
    row("streams open at SIGTERM", f"{figures['open_at_sigterm']} / {figures['streams']}")
    row("executions they watch", figures["executions"])
    row(
        "responses ended (from SIGTERM)",
        f"first {figures['ended_first_ms']:.0f} ms, p50 {figures['ended_p50_ms']:.0f} ms, "
        f"p99 {figures['ended_p99_ms']:.0f} ms, last {figures['ended_last_ms']:.0f} ms",
    )
    row(
        "ended cleanly / cut / still open",
        f"{figures['ended_clean']} / {figures['ended_cut']} / {figures['still_open']}",
    )
    exited = figures["exited_ms"]
    row("process exited (from SIGTERM)", "not in time" if exited is None else f"{exited:.0f} ms")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, "uvicorn")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=10)
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds the streams stay open before SIGTERM"
    )
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for the ends and the exit"
    )
    args = parser.parse_args()
    if math.ceil(args.streams / args.executions) > 100:
        parser.error("at most 100 streams per execution (one key each, MAX_STREAMS_PER_KEY)")
    return args


def main():
    args = parse_args()
    try:
        configure(args, args.streams)
        first_key, first = create_fixtures(USERNAME)
        keys = [first_key, *more_keys(args.executions - 1)]
        executions = [first] + [running_execution(USERNAME) for _ in range(args.executions - 1)]
        load_before = wait_for_quiet_machine(args.quiet_wait)
        server, streams, still_open, signalled, exited = asyncio.run(bench(args, keys, executions))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    for recorder in executions:
        complete_execution(recorder)
    figures = figures_of(args, server, streams, still_open, signalled, exited)
    tallies, problems = delivery_problems(streams, args.streams, last_seq=1, terminal=False)
    tallies["cut"] = figures["ended_cut"] + figures["still_open"]
    if tallies["cut"]:
        problems.append(f"{tallies['cut']} streams not ended cleanly")
    if exited is None:
        problems.append(f"the server had not exited {args.patience:g} s after SIGTERM")
    print_summary(server, figures)
    print_tallies(tallies)
    row("server log", server.log_path)
    verified = "every stream opened, had execution:started alone, and ended cleanly"
    return finish("shutdown", figures, problems, load_before, verified)


if __name__ == "__main__":
    sys.exit(main())
