"""The event log at scale: replay, the executions list and pruning over tens of millions
of events.

In a PostgreSQL database of its own (``bench_log``, kept between runs: generating the log
takes minutes; ``--regenerate`` starts over), the app's tables as its migrations make
them, filled with ``generate_series``: ``--executions`` (20,000) finished executions of
one user with ``--events`` (1,000) events each, 20 million events by default, half of the
executions ended 60 days ago and half today; one more execution holds the 10,000-event
history that is replayed. Then ``ANALYZE``.

Timed, ``--repeat`` (7) times each, the median and the range printed:

* **replay**: the 10,000-event history read as a stream reads it (``read_batch()`` in
  ``REPLAY_BATCH_SIZE`` batches, after a random ``Last-Event-ID`` near the start);
* **list**: ``GET /api/v1/executions`` through Django's test client with a key, its first
  page and its 400th (``per_page`` 20), the user owning every execution;
* **prune batch**: one ``retention.delete_batch()`` of ``--prune-batch`` (10) of the old
  executions (10,000 events), the unit ``pruneexecutions`` commits at a time; each run
  really deletes, so the old half shrinks by that much per run.

Then each operation's SQL once more under ``EXPLAIN (ANALYZE, BUFFERS)`` (the prune's in
a transaction rolled back), printed: the plans docs/operations.md shows. Last, one JSON
line of the figures.

    .venv/bin/python bench/log_scale.py                       # 20 million events
    .venv/bin/python bench/log_scale.py --executions 2000     # 2 million, a quick look
"""

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from datetime import timedelta

from stream_load import (
    ADMIN_DSN,
    BENCH_ENV,
    HOST,
    ROOT,
    SetupError,
    describe_load,
    machine_load,
    migrate,
)

DATABASE_NAME = "bench_log"
HISTORY = 10_000
USERNAME = "bench_log"


def prepare_database(regenerate):
    """Create ``bench_log`` (dropped first with ``regenerate``) and migrate it."""
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if regenerate:
            conn.execute(f'drop database if exists "{DATABASE_NAME}" with (force)')
        if not conn.execute(
            "select 1 from pg_database where datname = %s", (DATABASE_NAME,)
        ).fetchone():
            conn.execute(f'create database "{DATABASE_NAME}"')
    migrate()


def setup_django():
    sys.path.insert(0, str(ROOT))
    os.environ.update(BENCH_ENV)
    import django

    django.setup()


# The frames are the size of real ones (bench/stream_load.py's log: 150 to 200 bytes).
GENERATE_EXECUTIONS = """
insert into executions_execution
    (id, owner_id, mode, workflow_id, status, inputs, outputs, total_nodes, last_seq,
     created_at, started_at, completed_at)
select 'exec_scale_' || lpad(g::text, 9, '0'), %(owner)s, 'live', 'wf_scale_' || (g %% 50),
       'completed', '{"n": 1}', '{"ok": true}', 10, %(events)s,
       started, started, started + interval '30 seconds'
  from generate_series(1, %(executions)s) g,
       lateral (select case when g %% 2 = 0 then now() - interval '60 days'
                            else now() - interval '1 hour' end
                       - g * interval '1 second' as started) s
"""
GENERATE_EVENTS = """
insert into executions_event (execution_id, seq, type, data, created_at)
select e.id, s, 'execution:progress',
       '{"type": "execution:progress", "execution_id": "' || e.id
         || '", "completed_nodes": ' || (s %% 10) || ', "total_nodes": 10, "progress": '
         || ((s %% 10) * 10) || ', "current_node": "node_' || (s %% 10) || '"}',
       e.started_at + s * interval '1 millisecond'
  from executions_execution e, generate_series(1, e.last_seq) s
 where e.id between %(first)s and %(last)s
"""


def generate(executions, events):
    """Fill the log unless it already holds this many executions; return the history's
    execution id."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from executions.models import Execution
    from executions.recorder import ExecutionRecorder

    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    history = Execution.objects.filter(workflow_id="wf_scale_history").first()
    have = Execution.objects.filter(id__startswith="exec_scale_").count()
    if history is not None and have >= executions * 0.9:
        print(f"  the log is there: {have:,} executions (--regenerate to start over)")
        return history.pk, user
    print(f"  generating {executions:,} executions x {events:,} events ...", flush=True)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("truncate executions_event, executions_noderun, executions_execution")
        cursor.execute(
            GENERATE_EXECUTIONS, {"owner": user.pk, "events": events, "executions": executions}
        )
        step = 1000
        for first in range(1, executions + 1, step):
            cursor.execute(
                GENERATE_EVENTS,
                {
                    "first": f"exec_scale_{first:09d}",
                    "last": f"exec_scale_{min(first + step - 1, executions):09d}",
                },
            )
            print(f"    {min(first + step - 1, executions):,} executions", flush=True)
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_scale_history")
    recorder.start()
    for _ in range(HISTORY // 500):
        with recorder.batch():
            for number in range(500):
                recorder.progress(completed_nodes=number % 10, total_nodes=10)
    with connection.cursor() as cursor:
        cursor.execute("analyze")
    print(f"  generated in {time.monotonic() - started:.0f} s", flush=True)
    return recorder.execution_id, user


def sizes():
    from django.db import connection

    with connection.cursor() as cursor:
        # The planner's count (after ANALYZE): count(*) would read the whole log.
        cursor.execute("select reltuples::bigint from pg_class where relname = 'executions_event'")
        events = cursor.fetchone()[0]
        cursor.execute(
            "select pg_total_relation_size('executions_event'), "
            "pg_indexes_size('executions_event'), "
            "(select count(*) from executions_execution)"
        )
        total, indexes, executions = cursor.fetchone()
    return {
        "events": events,
        "executions": executions,
        "event_bytes": total,
        "index_bytes": indexes,
    }


def replay(history_id):
    from executions.log import is_last_batch, read_batch

    after = random.randint(0, 20)
    seqs = []
    while True:
        batch = read_batch(history_id, after)
        seqs += [item.seq for item in batch]
        if not batch or is_last_batch(batch):
            break
        after = batch[-1].seq
    return seqs


def timed(function, repeat):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return times


def captured(function):
    """The SQL ``function`` runs, in order, in a transaction rolled back."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        function()
        transaction.set_rollback(True)
    return [query["sql"] for query in queries.captured_queries]


def explain(statements):
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each statement of another shape than those before
    it (a replay's batches differ in their literals only), in a transaction rolled back."""
    from django.db import connection, transaction

    plans, shapes = [], set()
    with transaction.atomic():
        with connection.cursor() as cursor:
            for sql in statements:
                shape = re.sub(r"'[^']*'|\b\d+\b", "?", sql)
                if shape in shapes or shape.lstrip().upper().startswith(("SAVEPOINT", "RELEASE")):
                    continue
                shapes.add(shape)
                cursor.execute(f"explain (analyze, buffers) {sql}")
                plans.append((sql, "\n".join(row[0] for row in cursor.fetchall())))
        transaction.set_rollback(True)
    return plans


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000, help="events per execution")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--prune-batch", type=int, default=10)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--quiet-wait", type=float, default=0, help="(for make bench)")
    args = parser.parse_args()
    BENCH_ENV["DATABASE_URL"] = f"postgres://postgres@{HOST}:5432/{DATABASE_NAME}"
    load_before = machine_load()
    try:
        prepare_database(args.regenerate)
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    setup_django()
    from django.test import Client

    from apikeys.models import APIKey
    from executions.retention import delete_batch, expired

    history_id, user = generate(args.executions, args.events)
    _, raw_key = APIKey.objects.create_key(
        owner=user,
        name="log_scale",
        scopes=["executions:read"],
        rate_limit_per_minute=100_000_000,
        rate_limit_per_day=1_000_000_000,
    )
    client = Client(headers={"x-api-key": raw_key}, HTTP_HOST=HOST)
    size = sizes()
    print(
        f"  log: {size['events']:,} events of {size['executions']:,} executions, "
        f"{size['event_bytes'] / 2**30:.1f} GiB "
        f"with {size['index_bytes'] / 2**30:.1f} GiB of indexes"
    )

    problems = []
    replayed = replay(history_id)
    if replayed != sorted(set(replayed)) or len(replayed) < HISTORY - 20:
        problems.append(f"the replay read {len(replayed)} events, not in order or incomplete")

    def list_page(page):
        def get():
            response = client.get(f"/api/v1/executions?per_page=20&page={page}")
            if response.status_code != 200 or len(response.json()["data"]) != 20:
                problems.append(f"page {page}: {response.status_code}")

        return get

    old = expired(timedelta(days=30))

    def prune():
        deleted, events = delete_batch(old, args.prune_batch)
        if deleted != args.prune_batch or events != deleted * args.events:
            problems.append(f"a prune batch deleted {deleted} executions and {events} events")

    cases = [
        ("replay of 10,000 events", lambda: replay(history_id)),
        ("list, first page", list_page(1)),
        ("list, page 400", list_page(400)),
        (f"prune batch ({args.prune_batch} executions)", prune),
    ]
    list_page(1)()  # warm: imports, the connection
    results = {}
    print(f"\n  {'operation':<34} {'median':>9} {'min':>9} {'max':>9}   (ms, {args.repeat} runs)")
    for name, function in cases:
        times = timed(function, args.repeat)
        results[name] = {
            "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2),
            "max_ms": round(max(times), 2),
        }
        columns = "".join(f" {value:>9.1f}" for value in results[name].values())
        print(f"  {name:<34}{columns}")

    print("\nPlans (EXPLAIN (ANALYZE, BUFFERS)):")
    for name, function in cases:
        for sql, plan in explain(captured(function)):
            print(f"\n-- {name}\n{sql}\n{plan}")

    load_after = machine_load()
    print(f"\n  machine before the run   {describe_load(load_before)}")
    print(f"  machine after the run    {describe_load(load_after)}")
    print(
        "  VERIFICATION FAILED: " + "; ".join(problems)
        if problems
        else "  verified: the replay read the history in order; every page and prune batch "
        "was whole"
    )
    print(
        json.dumps(
            {
                "mode": "log_scale",
                **size,
                "results": results,
                "verified": not problems,
                "problems": problems,
            }
        )
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
