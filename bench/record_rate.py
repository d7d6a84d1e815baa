"""Recording: how many events per second one producer process records into one execution.

For each variant a fresh running execution and one producer process
(``bench/producer.py --rate 0``, as fast as it goes) recording ``--events`` events, as in
production: each transaction committed in PostgreSQL, then sent on the Redis channel
layer. First through the plain per-event API (``recorder.progress(...)`` in a loop: one
transaction per event), then through ``with recorder.batch():`` blocks of
``--batch-size`` events. A listener (one stream on one server process, opened before
the producer starts, reconnecting with ``Last-Event-ID`` if the server ends it early as
EventSource would) follows each execution.

Reported: the producer's events/s over its recording loop, its CPU, the time its
publisher still needed to hand the last messages to Redis, and the rate end to end (the
listener's receipt of the last event against the producer's start).

Verified in the same run: the log holds 1..last, each once; the listener received all
of them, in order, once, through the terminal event.

    .venv/bin/python bench/record_rate.py
"""

import argparse
import asyncio
import sys

from stream_load import (
    Server,
    SetupError,
    check_log,
    close_streams,
    common_arguments,
    configure,
    create_fixtures,
    delivery_problems,
    describe_server,
    finish,
    joined,
    open_streams,
    print_tallies,
    producer_report,
    py_spy_output,
    resume,
    running_execution,
    start_producer,
    wait_for_quiet_machine,
)


async def run_variant(args, server, key, batch, slug, name):
    recorder = await asyncio.to_thread(running_execution)
    execution_id = recorder.execution_id
    path = f"/api/v1/executions/{execution_id}/events"
    chain, failures, _ = await open_streams(server.port, path, key, 1, 1, args.patience)
    if failures:
        raise SetupError(f"the listener did not open: {failures[0]}")
    listener = asyncio.create_task(resume(chain, server.port, path, key, args.patience))
    py_spy = None
    if args.py_spy:
        py_spy = (args.py_spy_bin, py_spy_output(args.py_spy, slug))
    options = ("--rate", "0", "--count", str(args.events), "--batch", str(batch))
    producer = await start_producer(execution_id, *options, py_spy=py_spy)
    report = await producer_report(producer, args.patience)
    await asyncio.wait([listener], timeout=args.patience)  # then it counts as unfinished
    listener.cancel()
    await close_streams(chain)
    last_seq, problems = await asyncio.to_thread(check_log, execution_id)
    stream = joined(chain)
    tallies, stream_problems = delivery_problems([stream], 1, last_seq)
    problems += stream_problems
    if report.get("recorded") != args.events:
        problems.append(f"{name}: the producer recorded {report.get('recorded')} events")
    # The last progress event (the terminal one follows the loop): when the listener had it.
    index = len(stream.ids) - 2
    last_received = stream.times[index] if index >= 0 else None
    recorded = report.get("recorded", 0)
    elapsed = report.get("elapsed", 0.0)
    cpu = report.get("record_cpu_seconds", 0.0)
    end_to_end = last_received - report["started_at"] if last_received and report else None
    figures = {
        "variant": name,
        "batch": batch,
        "events": recorded,
        "per_second": round(report.get("rate", 0.0), 1),
        "elapsed_s": round(elapsed, 3),
        "producer_cores": round(cpu / max(elapsed, 1e-9), 2),
        "producer_cpu_us_per_event": round(cpu / max(recorded, 1) * 1e6, 1),
        "record_p50_ms": round(report.get("record_p50_ms", 0.0), 2),
        "record_max_ms": round(report.get("record_max_ms", 0.0), 2),
        "flush_s": round(report.get("flush_seconds", 0.0), 3),
        "end_to_end_per_second": round(recorded / end_to_end, 1) if end_to_end else None,
        "listener_behind_s": round(end_to_end - elapsed, 3) if end_to_end else None,
        "listener_streams": len(chain),
        "last_seq": last_seq,
    }
    return figures, tallies, problems


async def bench(args, key):
    server = Server.for_bench(args.server, label="record_rate")
    try:
        await server.start(key)
        variants = [
            (1, "per-event", "per event"),
            (args.batch_size, "batch", f"batch() of {args.batch_size}"),
        ]
        return server, [await run_variant(args, server, key, *variant) for variant in variants]
    finally:
        server.stop()


def print_summary(args, server, results):
    print()
    print(
        f"Recording {args.events} events into one execution from one producer process "
        f"(PostgreSQL, Redis channel layer); one listener on {describe_server(server)}"
    )
    header = ("variant", "events/s", "loop", "producer CPU", "per txn p50/max")
    header += ("send left", "end to end", "streams")
    widths = (16, 9, 8, 20, 16, 10, 11, 7)
    print("  " + " ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for figures, _, _ in results:
        end_to_end = figures["end_to_end_per_second"]
        cells = (
            figures["variant"],
            f"{figures['per_second']:.0f}",
            f"{figures['elapsed_s']:.2f} s",
            f"{figures['producer_cores']:.2f} ({figures['producer_cpu_us_per_event']:.0f} us/ev)",
            f"{figures['record_p50_ms']:.1f}/{figures['record_max_ms']:.1f} ms",
            f"{figures['flush_s']:.2f} s",
            f"{end_to_end:.0f} ev/s" if end_to_end else "-",
            str(figures["listener_streams"]),
        )
        print("  " + " ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)))
    print(
        "  (events/s and producer CPU over the recording loop; per txn: one record() or one "
        "batch(); send left: the publisher's flush after the loop; end to end: events over "
        "the producer's start to the listener's receipt of the last; streams: the "
        "listener's, 1 if never ended early)"
    )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, py_spy="profile the producer (OUT-VARIANT.ext)")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--patience", type=float, default=300.0, help="seconds per variant")
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        configure(args)
        key, _ = create_fixtures()
        background = wait_for_quiet_machine(args.quiet_wait)
        server, results = asyncio.run(bench(args, key))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    print_summary(args, server, results)
    problems = [problem for _, _, found in results for problem in found]
    totals = {name: sum(t[name] for _, t, _ in results) for name in results[0][1]}
    print_tallies(totals)
    figures = {"events": args.events, "variants": [figures for figures, _, _ in results]}
    verified = (
        "each log holds 1..last once; the listener had every event once, in order, through "
        "the terminal event"
    )
    return finish("record", {**figures, **totals}, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
