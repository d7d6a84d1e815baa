"""Opening streams: how many per second one server process (or ``--workers``) takes.

Each case gets a fresh server process and a fresh running execution (one event in its
log, ``execution:started``) and opens ``--streams`` streams on it, at most
``--connect-concurrency`` waiting at once: first with this benchmark's client (a stream
counts as open at its ``connected`` frame plus the replayed event), then with the
reference client, ``/work/shared/bench/sse_load.py`` (its
``connect.time_to_establish_all_s``: a stream counts at its response head); both as
fast as the server takes them, then both paced at ``--pace`` streams per second (the
issue's table: 500/s). It samples the server's PostgreSQL connections (in
``pg_stat_activity``) and threads every 50 ms.

Verified in the same run: every stream of ours opens, gets ``execution:started`` once,
and, when the execution then completes, ``execution:completed`` and the end of its
response; the reference client reports no failed or dropped stream.

``--against CHECKOUT`` measures another checkout of the project (another commit) in
turns with this one: ``--rounds`` (5) unpaced cases of this client each, the order
reversed each round, so that both go through the same moments of a machine whose speed
drifts.

    .venv/bin/python bench/open_rate.py --server uvicorn              # 1,000 streams
    .venv/bin/python bench/open_rate.py --server daphne --streams 5000
    .venv/bin/python bench/open_rate.py --server uvicorn --against ../before
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from stream_load import (
    HOST,
    ROOT,
    Sampler,
    Server,
    SetupError,
    client_cpu_seconds,
    close_streams,
    common_arguments,
    complete_execution,
    configure,
    create_fixtures,
    delivery_problems,
    finish,
    in_turns,
    open_streams,
    parse_with_workers,
    percentile,
    print_tallies,
    row,
    running_execution,
    server_cpu_seconds,
    server_label,
    start_py_spy,
    stop_py_spy,
    wait_done,
    wait_for_quiet_machine,
    wait_replayed,
)

REFERENCE_CLIENT = Path("/work/shared/bench/sse_load.py")


async def open_ours(args, server, path, key, recorder, pace):
    """Open the streams with this benchmark's client; return the case's figures and
    tallies, and the problems found."""
    cpu0, client0 = server_cpu_seconds(server)[0], client_cpu_seconds()
    started = time.time()
    streams, failures, _ = await open_streams(
        server.port,
        path,
        key,
        args.streams,
        args.connect_concurrency,
        args.connect_timeout,
        pace=pace,
    )
    await wait_replayed(streams, args.connect_timeout)
    opened = [s for s in streams if s.replayed.done() and s.replayed.result()]
    seconds = max((s.replayed.result() for s in opened), default=started) - started
    server_cores = (server_cpu_seconds(server)[0] - cpu0) / max(seconds, 1e-9)
    client_cores = (client_cpu_seconds() - client0) / max(seconds, 1e-9)
    latencies = sorted(s.replayed.result() - s.sent_at for s in opened)
    # Then one live event for all: each stream must end with it.
    await asyncio.to_thread(complete_execution, recorder)
    await wait_done(streams, args.drain_timeout)
    tallies, problems = delivery_problems(streams, args.streams, last_seq=2)
    await close_streams(streams)
    figures = {
        "opened": len(opened),
        "seconds": round(seconds, 3),
        "per_second": round(len(opened) / max(seconds, 1e-9), 1),
        "open_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "open_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "server_cores": round(server_cores, 2),
        "client_cores": round(client_cores, 2),
        "first_failure": failures[0] if failures else None,
    }
    return figures, tallies, problems


async def open_reference(args, server, path, key, pace):
    """Open the streams with the reference client; return its figures and problems."""
    with tempfile.NamedTemporaryFile(suffix=".json", prefix="sse_load_") as out:
        command = [
            sys.executable,
            str(args.reference),
            "--url",
            f"http://{HOST}:{server.port}{path}",
            "-H",
            f"X-API-Key: {key}",
            "-n",
            str(args.streams),
            "--ramp-rate",
            f"{pace:g}",
            "--connect-concurrency",
            str(args.connect_concurrency),
            "--connect-timeout",
            f"{args.connect_timeout:g}",
            "--idle-hold",
            "2",
            "--server-pid",
            str(server.pid),
            "--duration",
            "600",
            "--json-out",
            out.name,
        ]
        client = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(client.communicate(), 700)
        try:
            report = json.loads(await asyncio.to_thread(Path(out.name).read_text))
        except ValueError:
            raise SetupError(f"sse_load.py wrote no report:\n{output.decode()[-2000:]}") from None
    connect = report["connect"]
    seconds = connect["time_to_establish_all_s"] or 0.0
    figures = {
        "opened": connect["established"],
        "seconds": seconds,
        "per_second": round(connect["established"] / max(seconds, 1e-9), 1),
        "open_p50_ms": round(connect["connect_ms"]["p50"] or 0, 1),
        "open_p99_ms": round(connect["connect_ms"]["p99"] or 0, 1),
        "server_cores": round((connect["cpu"]["server_core_pct"] or 0) / 100, 2),
        "client_cores": round(connect["cpu"]["client_core_pct"] / 100, 2),
        "first_failure": connect["first_failure"],
    }
    problems = [
        f"sse_load.py: {count} {what}"
        for what, count in (
            ("failed", connect["failed"]),
            ("dropped", report["dropped"]["count"]),
            ("not established", args.streams - connect["established"]),
        )
        if count
    ]
    return figures, problems


async def run_case(args, key, client, pace, root):
    """One case on a fresh server of checkout ``root`` and a fresh execution:
    ``(figures, tallies, problems)``."""
    recorder = await asyncio.to_thread(running_execution)
    path = f"/api/v1/executions/{recorder.execution_id}/events"
    server = Server.for_bench(args.server, workers=args.workers, label="open_rate", root=root)
    sampler = Sampler(server, interval=0.05, queues=False)
    spy = None
    try:
        await server.start(key)
        await sampler.start()
        if args.py_spy and client == "bench" and not pace:
            spy = await start_py_spy(
                args.py_spy_bin, server.pid, args.py_spy, subprocesses=server.workers > 1
            )
        if client == "bench":
            figures, tallies, problems = await open_ours(args, server, path, key, recorder, pace)
        else:
            tallies = None
            figures, problems = await open_reference(args, server, path, key, pace)
            await asyncio.to_thread(complete_execution, recorder)
        if spy is not None:
            await stop_py_spy(spy)
        await sampler.sample()
    finally:
        await sampler.stop()
        server.stop()
    figures.update(
        client=client,
        checkout=str(root),
        cpu_ms_per_open=round(
            1000 * figures["server_cores"] * figures["seconds"] / figures["opened"], 2
        ),
        pace=pace,
        peak_pg=sampler.peak_pg,
        peak_threads=sampler.peak_threads,
        server_log=str(server.log_path),
    )
    return figures, tallies, problems


def print_summary(args, cases):
    print()
    print(
        f"Opening {args.streams} streams: {server_label(args.server, args.workers)} (a fresh "
        "server per case), "
        f"at most {args.connect_concurrency} connecting at once"
    )
    header = ("client, pacing", "streams/s", "all open", "opened", "open p50/p99", "server")
    header += ("ms/open", "client", "peak PG", "peak threads")
    widths = (24, 10, 10, 12, 16, 8, 8, 8, 8, 12)
    print("  " + " ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for case in cases:
        pacing = f"{case['pace']:g}/s" if case["pace"] else "unpaced"
        against = " against" if case["checkout"] != str(ROOT) else ""
        cells = (
            f"{case['client']}, {pacing}{against}",
            f"{case['per_second']:.0f}",
            f"{case['seconds']:.2f} s",
            f"{case['opened']}/{args.streams}",
            f"{case['open_p50_ms']}/{case['open_p99_ms']} ms",
            f"{case['server_cores']:.2f}",
            f"{case['cpu_ms_per_open']:.2f}",
            f"{case['client_cores']:.2f}",
            str(case["peak_pg"]),
            str(case["peak_threads"]),
        )
        print("  " + " ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)))
    print(
        "  (bench: open at the `connected` frame plus the replayed event; sse_load: at the "
        "response head, its connect.time_to_establish_all_s; server and client in cores, "
        "ms/open: the server's CPU per stream opened)"
    )
    if args.against:
        for checkout in (str(ROOT), str(args.against)):
            rates = [c["per_second"] for c in cases if c["checkout"] == checkout]
            cpu = [c["cpu_ms_per_open"] for c in cases if c["checkout"] == checkout]
            row(
                f"in turns, {checkout}",
                f"{sum(rates) / len(rates):.0f} streams/s ({min(rates):.0f}-{max(rates):.0f}), "
                f"{sum(cpu) / len(cpu):.2f} ms of CPU per open",
            )
    for case in cases:
        if case["first_failure"]:
            row(f"first failure, {case['client']}", case["first_failure"])


def planned_cases(args):
    """``(client, pace, checkout)`` of each case, in order: with ``--against``, this
    benchmark's client unpaced, the two checkouts taking ``--rounds`` turns (the order
    reversed each round)."""
    if args.against:
        return [("bench", 0.0, root) for root in in_turns([ROOT, args.against], args.rounds)]
    clients = ["bench", "sse_load"] if args.reference.exists() else ["bench"]
    paces = (0.0, args.pace) if args.pace else (0.0,)
    return [
        (client, pace, ROOT) for pace in paces for client in clients for _ in range(args.rounds)
    ]


async def bench(args, key):
    cases, tallies, problems = [], [], []
    for client, pace, root in planned_cases(args):
        figures, case_tallies, case_problems = await run_case(args, key, client, pace, root)
        cases.append(figures)
        if case_tallies is not None:
            tallies.append(case_tallies)
        problems += case_problems
    return cases, tallies, problems


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, py_spy="profile the server while this client opens, unpaced")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--connect-concurrency", type=int, default=256)
    parser.add_argument("--pace", type=float, default=500.0, help="the paced cases (0: none)")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--reference", type=Path, default=REFERENCE_CLIENT)
    return parse_with_workers(
        parser, rounds=("cases of each kind (with --against: of each checkout)", 5)
    )


def main():
    args = parse_args()
    try:
        configure(args, args.streams)
        key, _ = create_fixtures()
        background = wait_for_quiet_machine(args.quiet_wait)
        cases, tallies, problems = asyncio.run(bench(args, key))
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    print_summary(args, cases)
    if not args.reference.exists():
        row("reference client", f"{args.reference} is missing: not run")
    totals = {name: sum(t[name] for t in tallies) for name in tallies[0]}
    print_tallies(totals)
    figures = {"server": args.server, "streams": args.streams, "cases": cases, **totals}
    verified = (
        "every stream of ours opened and had execution:started and then execution:completed "
        "once, in order; the reference client lost none"
    )
    return finish("open", figures, problems, background, verified)


if __name__ == "__main__":
    sys.exit(main())
