"""Late join: how long one client waits for a long history.

A running execution has ``--history`` events (recorded with ``batch()``); one client at a
time opens its stream with no ``Last-Event-ID``, on one server process, and the
benchmark times, from the request's sending, the response's first byte and the socket
read that brought the history's last event. One cold join (the server's first stream on
the execution) is reported on its own, then ``--repeat`` joins give the p50 and the max.

Verified in the same run: every join received the ids 1..history, in order, once.

    .venv/bin/python bench/late_join.py --server uvicorn
"""

import argparse
import asyncio
import sys

from stream_load import (
    Server,
    SetupError,
    close_streams,
    common_arguments,
    complete_execution,
    configure,
    create_fixtures,
    delivery_problems,
    describe_server,
    finish,
    open_streams,
    percentile,
    print_tallies,
    record_history,
    row,
    start_py_spy,
    stop_py_spy,
    wait_for_quiet_machine,
)


async def join(server, path, key, last_seq, patience):
    """Open one stream and read the history; return it, or None if it did not open."""
    streams, failures, _ = await open_streams(server.port, path, key, 1, 1, patience)
    if failures:
        return None
    stream = streams[0]
    for _ in range(int(patience / 0.005)):  # the times come from the stream's own reads
        if (stream.ids and stream.ids[-1] >= last_seq) or stream.done.done():
            break
        await asyncio.sleep(0.005)
    await close_streams(streams)
    return stream


def timings(stream, last_seq):
    """``(first byte, last event)`` seconds after the request went out."""
    if stream is None or not stream.ids or stream.ids[-1] < last_seq:
        return None, None
    return stream.first_byte - stream.sent_at, stream.times[-1] - stream.sent_at


async def bench(args, key, recorder, last_seq):
    path = f"/api/v1/executions/{recorder.execution_id}/events"
    server = Server.for_bench(args.server, label="late_join")
    spy = None
    try:
        await server.start(key)
        cold = await join(server, path, key, last_seq, args.patience)
        if args.py_spy:
            spy = await start_py_spy(args.py_spy_bin, server.pid, args.py_spy)
        joins = [await join(server, path, key, last_seq, args.patience) for _ in range(args.repeat)]
        if spy is not None:
            await stop_py_spy(spy)
    finally:
        server.stop()
    await asyncio.to_thread(complete_execution, recorder)
    return server, cold, joins


def print_summary(args, server, last_seq, cold, warm):
    firsts = sorted(first for first, _ in warm if first is not None)
    lasts = sorted(last for _, last in warm if last is not None)
    print()
    print(f"Late join: {describe_server(server)}, a history of {last_seq} events, one client")
    if cold[0] is not None:
        row("cold join: first byte / all", f"{cold[0] * 1000:.1f} / {cold[1] * 1000:.1f} ms")
    row(
        f"{len(lasts)} joins: first byte p50 / max",
        f"{percentile(firsts, 0.5) * 1000:.1f} / {percentile(firsts, 1.0) * 1000:.1f} ms",
    )
    row(
        f"{len(lasts)} joins: all p50 / max",
        f"{percentile(lasts, 0.5) * 1000:.1f} / {percentile(lasts, 1.0) * 1000:.1f} ms "
        "(target: under 150 ms)",
    )
    return firsts, lasts


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, py_spy="profile the server during the repeated joins")
    parser.add_argument("--history", type=int, default=10_000, help="events in the log")
    parser.add_argument("--repeat", type=int, default=10, help="joins after the cold one")
    parser.add_argument("--patience", type=float, default=30.0, help="seconds per join")
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        configure(args)
        key, recorder = create_fixtures()
        last_seq = record_history(recorder, args.history - 1, batch_size=1000)
        background = wait_for_quiet_machine(args.quiet_wait)
        server, cold, joins = asyncio.run(bench(args, key, recorder, last_seq))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    streams = [stream for stream in (cold, *joins) if stream is not None]
    tallies, problems = delivery_problems(streams, 1 + args.repeat, last_seq, terminal=False)
    firsts, lasts = print_summary(
        args, server, last_seq, timings(cold, last_seq), [timings(s, last_seq) for s in joins]
    )
    print_tallies(tallies)
    cold_first, cold_last = timings(cold, last_seq)
    figures = {
        "server": args.server,
        "history": last_seq,
        "repeat": args.repeat,
        "cold_first_byte_ms": round(cold_first * 1000, 1) if cold_first else None,
        "cold_all_ms": round(cold_last * 1000, 1) if cold_last else None,
        "first_byte_p50_ms": round(percentile(firsts, 0.5) * 1000, 1),
        "first_byte_max_ms": round(percentile(firsts, 1.0) * 1000, 1),
        "all_p50_ms": round(percentile(lasts, 0.5) * 1000, 1),
        "all_max_ms": round(percentile(lasts, 1.0) * 1000, 1),
        **tallies,
    }
    verified = f"every join received ids 1..{last_seq}, in order, once"
    return finish("latejoin", figures, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
