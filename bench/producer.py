"""Record ``execution:progress`` into one execution at a fixed rate, then complete it.

Run by the benchmark in its own process, so events travel the production path:
committed in PostgreSQL, then published to the Redis channel layer. ``--rate 0`` records
as fast as it goes; ``--batch N`` records N events per ``with recorder.batch():``
transaction instead of one per event. Prints one JSON line with what it did.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("execution_id")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second, 0: no pause")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--count", type=int, help="events to record (default: rate x duration)")
    parser.add_argument("--batch", type=int, default=1, help="events per batch() transaction")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmaestro.settings")
    import django

    django.setup()
    from executions import publisher
    from executions.recorder import ExecutionRecorder

    recorder = ExecutionRecorder(args.execution_id)
    count = args.count if args.count is not None else max(int(args.rate * args.duration), 0)
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    # Bounded in time as well as in count: a producer that falls far behind stops.
    deadline = time.monotonic() + 2 * args.duration + 10 if interval else float("inf")
    started_at, started, cpu0 = time.time(), time.monotonic(), cpu_seconds()
    recorded = 0
    worst_behind = 0.0
    record_seconds = []
    for first in range(0, count, args.batch):
        due = started + first * interval
        now = time.monotonic()
        if now > deadline:
            break
        if due > now:
            time.sleep(due - now)
        else:
            worst_behind = max(worst_behind, now - due)
        before = time.monotonic()
        events = range(first, min(first + args.batch, count))
        if args.batch == 1:
            recorder.progress(
                completed_nodes=first + 1, total_nodes=count, current_node=f"node_{first + 1}"
            )
        else:
            with recorder.batch():
                for index in events:
                    recorder.progress(
                        completed_nodes=index + 1,
                        total_nodes=count,
                        current_node=f"node_{index + 1}",
                    )
        record_seconds.append(time.monotonic() - before)
        recorded += len(events)
    elapsed = time.monotonic() - started
    record_cpu = cpu_seconds() - cpu0
    recorder.complete({"recorded": recorded})
    # What the publisher still has to hand to the channel layer once the loop is done.
    flushed = time.monotonic()
    publisher.flush()
    record_seconds.sort()
    print(
        json.dumps(
            {
                "recorded": recorded,
                "batch": args.batch,
                "started_at": started_at,
                "elapsed": elapsed,
                "rate": recorded / elapsed if elapsed else 0.0,
                "worst_behind_ms": worst_behind * 1000,
                "record_p50_ms": record_seconds[len(record_seconds) // 2] * 1000
                if record_seconds
                else 0.0,
                "record_max_ms": record_seconds[-1] * 1000 if record_seconds else 0.0,
                "record_cpu_seconds": record_cpu,
                "flush_seconds": time.monotonic() - flushed,
                "cpu_seconds": cpu_seconds(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
