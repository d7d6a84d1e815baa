"""A reconnect storm: thousands of clients come back at once, as after a restart.

An execution has a history (``--history`` events, recorded with ``batch()``) and a
producer (``bench/producer.py``) records ``--rate`` events per second into it for
``--duration`` seconds, then completes it. Once the producer is recording, the
benchmark notes the execution's last id L and opens ``--clients`` streams at once, each
with a random ``Last-Event-ID`` in 0..L, on a freshly started server process (or
``--workers`` processes behind one port). The storm's figure is the time from then until
every client has received everything up to L (the target: 10 s); it also gives the time
until all are connected and per client percentiles. A client whose stream the server
ends before the terminal event (as it ends a subscription that has queued
``STREAM_QUEUE_SIZE`` events) resumes as EventSource would, with its last id (at once,
not after ``retry:``); those are counted.

Verified in the same run: once the producer has completed the execution, every client
(over its resumed streams) received exactly the ids after its Last-Event-ID, in order,
once, through the terminal event; and the log itself holds 1..last, each once.

    .venv/bin/python bench/storm.py --server uvicorn
"""

import argparse
import asyncio
import bisect
import random
import sys
import time

from stream_load import (
    Sampler,
    Server,
    SetupError,
    check_log,
    client_cpu_seconds,
    close_streams,
    common_arguments,
    configure,
    create_fixtures,
    delivery_problems,
    describe_server,
    finish,
    joined,
    open_streams,
    parse_with_workers,
    percentile,
    print_tallies,
    producer_report,
    record_history,
    resume,
    row,
    server_cpu_seconds,
    start_producer,
    start_py_spy,
    stop_py_spy,
    wait_for_quiet_machine,
)


def caught_up_at(chain, seq):
    """Return when a client (its ``chain`` of streams) had received every event up to
    ``seq``, or None."""
    first = chain[0]
    if not first.is_connected:
        return None
    if (first.after or 0) >= seq:
        return first.connected.result()
    for stream in chain:
        index = bisect.bisect_left(stream.ids, seq)  # ids are checked to be in order later
        if index < len(stream.ids):
            return stream.times[index]
    return None


async def wait_caught_up(chains, seq, patience):
    """Wait (at most ``patience`` seconds) until every client has caught up."""
    for _ in range(int(patience / 0.1)):
        if all(caught_up_at(chain, seq) for chain in chains if chain[0].is_connected):
            return
        await asyncio.sleep(0.1)


async def wait_recording(execution_id, history, patience=60.0):
    """Return the execution's last id once the producer has recorded past ``history``."""
    for _ in range(int(patience / 0.1)):
        last_seq, _ = await asyncio.to_thread(check_log, execution_id)
        if last_seq > history:
            return last_seq
        await asyncio.sleep(0.1)
    raise SetupError("the producer recorded nothing")


async def storm(args, key, recorder):
    execution_id = recorder.execution_id
    path = f"/api/v1/executions/{execution_id}/events"
    server = Server.for_bench(args.server, workers=args.workers, label="storm")
    sampler = Sampler(server)
    producer = spy = None
    try:
        await server.start(key)
        await sampler.start()
        options = ("--rate", str(args.rate), "--duration", str(args.duration))
        producer = await start_producer(execution_id, *options)
        await wait_recording(execution_id, args.history)
        await asyncio.sleep(1.0)  # recording steadily
        last_seq = (await asyncio.to_thread(check_log, execution_id))[0]
        choose = random.Random(args.seed).randint
        afters = [choose(0, last_seq) for _ in range(args.clients)]
        if args.py_spy:
            spy = await start_py_spy(
                args.py_spy_bin, server.pid, args.py_spy, subprocesses=server.workers > 1
            )
        cpu0, client0 = server_cpu_seconds(server)[0], client_cpu_seconds()
        started = time.time()
        streams, failures, _ = await open_streams(
            server.port,
            path,
            key,
            args.clients,
            args.connect_concurrency,
            args.connect_timeout,
            last_event_ids=afters,
        )
        all_connected = time.time() - started
        chains = [[stream] for stream in streams]
        following = asyncio.gather(
            *(resume(chain, server.port, path, key, args.connect_timeout) for chain in chains)
        )
        await wait_caught_up(chains, last_seq, args.catch_up_timeout)
        storm_seconds = time.time() - started
        storm_cpu = server_cpu_seconds(server)[0] - cpu0
        storm_client_cpu = client_cpu_seconds() - client0
        if spy is not None:
            await stop_py_spy(spy)
        rss, threads, pg = await sampler.sample()
        report = await producer_report(producer, 2 * args.duration + 60)
        await asyncio.wait([following], timeout=args.drain_timeout)
        following.cancel()
        final_seq, log_problems = await asyncio.to_thread(check_log, execution_id)
        await close_streams([stream for chain in chains for stream in chain])
    finally:
        if producer is not None and producer.returncode is None:
            producer.kill()
        await sampler.stop()
        server.stop()
    caught_up = sorted(
        at - started for at in (caught_up_at(c, last_seq) for c in chains) if at is not None
    )
    results = {
        "last_seq_at_storm": last_seq,
        "final_seq": final_seq,
        "all_connected_seconds": all_connected,
        "storm_cpu": storm_cpu,
        "storm_client_cpu": storm_client_cpu,
        "peak_kernel_queue": sampler.peak_kernel_queue,
        "storm_seconds": storm_seconds,
        "caught_up": caught_up,
        "failures": failures,
        "producer": report,
        "peak_rss": sampler.peak_rss,
        "peak_threads": sampler.peak_threads,
        "peak_pg": sampler.peak_pg,
        "rss_threads_pg": (rss, threads, pg),
        "log_problems": log_problems,
        "frames": sum(len(s.ids) for chain in chains for s in chain),
        "resumed": sum(len(chain) - 1 for chain in chains),
        "clients_resumed": sum(1 for chain in chains if len(chain) > 1),
    }
    return server, [joined(chain) for chain in chains], results


def print_summary(args, server, results, tallies):
    caught_up = results["caught_up"]
    producer = results["producer"]
    print()
    print(
        f"Reconnect storm: {describe_server(server)}, {args.clients} clients at once, "
        f"{args.history} events of history, {args.rate:g} ev/s recorded meanwhile"
    )
    last_seq = results["last_seq_at_storm"]
    row("last id when the storm began (L)", last_seq)
    row("Last-Event-IDs", f"random in 0..{last_seq} (seed {args.seed})")
    row("clients caught up", f"{len(caught_up)} / {args.clients}")
    row("all connected after", f"{results['all_connected_seconds']:.2f} s")
    everyone = caught_up[-1] if len(caught_up) == args.clients else None
    row(
        "every client had all up to L after",
        f"{everyone:.2f} s (target: 10 s)" if everyone is not None else "never (see below)",
    )
    row(
        "per client: p50 / p99 / max",
        f"{percentile(caught_up, 0.5):.2f} / {percentile(caught_up, 0.99):.2f} / "
        f"{percentile(caught_up, 1.0):.2f} s",
    )
    row("frames delivered (replayed and live)", results["frames"])
    row(
        "streams the server ended early",
        f"{results['resumed']} ({results['clients_resumed']} clients), each resumed at once "
        "with its last id",
    )
    seconds = max(results["storm_seconds"], 1e-9)
    row(
        "server / client CPU during the storm",
        f"{results['storm_cpu'] / seconds:.2f} / {results['storm_client_cpu'] / seconds:.2f} cores",
    )
    row("kernel socket queues (peak)", f"{results['peak_kernel_queue'] / 1024:.0f} KiB")
    row(
        "producer",
        f"{producer.get('recorded', '?')} events at {producer.get('rate', 0):.1f} ev/s "
        f"(worst behind {producer.get('worst_behind_ms', 0):.0f} ms), last id "
        f"{results['final_seq']}",
    )
    row(
        "server RSS, threads, PG connections peak",
        f"{results['peak_rss'] / 1024:.0f} MiB, {results['peak_threads']}, {results['peak_pg']}",
    )
    if results["failures"]:
        row(
            f"waited over {args.connect_timeout:g} s for `connected`",
            f"{len(results['failures'])}: {results['failures'][0]}",
        )
    print_tallies(tallies)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, py_spy="profile the server during the storm")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--history", type=int, default=2000, help="events before the storm")
    parser.add_argument("--rate", type=float, default=50.0, help="live events per second")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of live events")
    parser.add_argument(
        "--connect-concurrency", type=int, help="connections in flight (default: all at once)"
    )
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument(
        "--catch-up-timeout", type=float, default=300.0, help="seconds to wait for everyone"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the terminal events once the producer is done",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the random Last-Event-IDs")
    args = parse_with_workers(parser)
    args.connect_concurrency = args.connect_concurrency or args.clients
    return args


def main():
    args = parse_args()
    try:
        configure(args, args.clients)
        key, recorder = create_fixtures()
        record_history(recorder, args.history - 1)  # after execution:started
        background = wait_for_quiet_machine(args.quiet_wait)
        server, streams, results = asyncio.run(storm(args, key, recorder))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    tallies, problems = delivery_problems(streams, args.clients, results["final_seq"])
    problems += results["log_problems"]
    print_summary(args, server, results, tallies)
    caught_up = results["caught_up"]
    seconds = max(results["storm_seconds"], 1e-9)
    figures = {
        "server": args.server,
        "clients": args.clients,
        "history": args.history,
        "rate": args.rate,
        "last_seq_at_storm": results["last_seq_at_storm"],
        "final_seq": results["final_seq"],
        "all_connected_s": round(results["all_connected_seconds"], 3),
        "all_caught_up_s": round(caught_up[-1], 3) if len(caught_up) == args.clients else None,
        "caught_up_p50_s": round(percentile(caught_up, 0.5), 3),
        "caught_up_p99_s": round(percentile(caught_up, 0.99), 3),
        "storm_server_cores": round(results["storm_cpu"] / seconds, 2),
        "storm_client_cores": round(results["storm_client_cpu"] / seconds, 2),
        "resumed": results["resumed"],
        "peak_rss_mib": round(results["peak_rss"] / 1024),
        "peak_pg": results["peak_pg"],
        "peak_threads": results["peak_threads"],
        **tallies,
    }
    verified = (
        "every client had exactly the ids after its Last-Event-ID, in order, once, through "
        "the terminal event; the log is gap-free"
    )
    return finish("storm", figures, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
