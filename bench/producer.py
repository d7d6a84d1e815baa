"""Record ``execution:progress`` into one execution at a fixed rate, then complete it.

Run by ``stream_load.py`` in its own process, so events travel the production path:
committed in PostgreSQL, then published to the Redis channel layer. Prints one JSON
line with what it did.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("execution_id")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmaestro.settings")
    import django

    django.setup()
    from executions.recorder import ExecutionRecorder

    recorder = ExecutionRecorder(args.execution_id)
    count = max(int(args.rate * args.duration), 0)
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    # Bounded in time as well as in count: a producer that falls far behind stops.
    deadline = time.monotonic() + 2 * args.duration + 10
    started = time.monotonic()
    recorded = 0
    worst_behind = 0.0
    record_seconds = []
    for index in range(count):
        due = started + index * interval
        now = time.monotonic()
        if now > deadline:
            break
        if due > now:
            time.sleep(due - now)
        else:
            worst_behind = max(worst_behind, now - due)
        before = time.monotonic()
        recorder.progress(
            completed_nodes=index + 1, total_nodes=count, current_node=f"node_{index + 1}"
        )
        record_seconds.append(time.monotonic() - before)
        recorded += 1
    elapsed = time.monotonic() - started
    recorder.complete({"recorded": recorded})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record_seconds.sort()
    print(
        json.dumps(
            {
                "recorded": recorded,
                "elapsed": elapsed,
                "rate": recorded / elapsed if elapsed else 0.0,
                "worst_behind_ms": worst_behind * 1000,
                "record_p50_ms": record_seconds[len(record_seconds) // 2] * 1000
                if record_seconds
                else 0.0,
                "record_max_ms": record_seconds[-1] * 1000 if record_seconds else 0.0,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
