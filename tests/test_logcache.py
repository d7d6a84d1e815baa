"""``executions.logcache``: what the process read of the log lately, answering a read only
as the database would answer it."""

import random
import threading
import time

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY

from apikeys.asyncdb import in_short_session
from apikeys.asyncdb import run_in_short_session as db
from executions import log
from executions.events import TERMINAL_EVENTS
from executions.fanout import GRANT_REVOKED, get_hub
from executions.log import Item, cached_batch, is_last_batch, read_batch, read_log
from executions.logcache import LOG_CACHE, size_of
from executions.models import Execution
from tests.runs import completed_run, running

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_cache():
    LOG_CACHE.clear()
    yield
    LOG_CACHE.clear()


def batches_of(settings, size):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "REPLAY_BATCH_SIZE": size}


def made_up(first, last, size=10):
    return [Item(seq, "execution:progress", b"x" * size) for seq in range(first, last + 1)]


def from_the_database(execution_id, after, until, size):
    """What ``read_batch()`` answered before there was a cache."""
    batch = read_log(execution_id, after, size)
    batch = [item for item in batch if until is None or item.seq <= until]
    for index, item in enumerate(batch):
        if item.event in TERMINAL_EVENTS:
            return batch[: index + 1]
    return batch


def replay(execution_id, after=0):
    """Read the log after ``after`` as a stream replays it."""
    items = []
    while True:
        batch = read_batch(execution_id, after)
        items += batch
        if not batch or is_last_batch(batch):
            return items
        after = batch[-1].seq


def test_a_history_read_once_is_replayed_again_without_the_database(user, settings):
    batches_of(settings, 3)
    execution_id = completed_run(user)
    first = replay(execution_id)
    with CaptureQueriesContext(connection) as queries:
        again = replay(execution_id)
        from_the_middle = replay(execution_id, after=4)
    assert again == first == read_log(execution_id, 0, 1000)
    assert from_the_middle == first[4:]
    assert len(queries) == 0
    assert cached_batch(execution_id, 4) == first[4:7]


def test_the_cache_answers_every_read_as_the_database_does(user, settings):
    batches_of(settings, 7)
    recorder = running(user, events=20)
    randomly = random.Random(10)
    for round_ in range(400):
        if round_ in (50, 150, 250):
            for number in range(5):  # the log grows behind what the cache holds
                recorder.progress(completed_nodes=number, total_nodes=100)
        if round_ == 300:
            recorder.complete({"ok": True})
        last = Execution.objects.get(pk=recorder.execution_id).last_seq
        after = randomly.randint(0, last + 2)
        until = randomly.choice([None, randomly.randint(0, last + 2)])
        expected = from_the_database(recorder.execution_id, after, until, 7)
        assert read_batch(recorder.execution_id, after, until) == expected, (after, until)
        cached = cached_batch(recorder.execution_id, after, until)
        assert cached in (None, expected), (after, until)
    assert LOG_CACHE.get(recorder.execution_id, 0, 1000) == read_log(recorder.execution_id, 0, 1000)


def test_replays_on_many_threads_while_the_log_grows_read_what_the_database_holds(user, settings):
    batches_of(settings, 4)
    recorder = running(user, events=10)
    randomly, replays, recording = random.Random(3), [], threading.Event()

    def replay_again_and_again(seed):
        starts = random.Random(seed)
        while not recording.is_set():
            after = starts.randint(0, 40)
            replays.append((after, in_short_session(replay, recorder.execution_id, after)))

    threads = [threading.Thread(target=replay_again_and_again, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for number in range(30):
            recorder.progress(completed_nodes=number, total_nodes=100)
            time.sleep(randomly.random() / 100)
        recorder.complete({"ok": True})
    finally:
        recording.set()
        for thread in threads:
            thread.join()
    logged = read_log(recorder.execution_id, 0, 1000)
    assert len(logged) == 41 and len(replays) > 40
    for after, items in replays:
        assert items == logged[after : after + len(items)], after
    assert replay(recorder.execution_id) == logged


def test_events_recorded_after_a_cached_read_come_from_the_database(user):
    recorder = running(user, events=3)
    assert [item.seq for item in read_batch(recorder.execution_id, 0)] == [1, 2, 3]
    assert cached_batch(recorder.execution_id, 0) is None  # a short batch: the log may go on
    recorder.progress(completed_nodes=1, total_nodes=2)
    recorder.complete({"ok": True})
    assert [item.seq for item in read_batch(recorder.execution_id, 0)] == [1, 2, 3, 4, 5]
    assert [item.seq for item in cached_batch(recorder.execution_id, 2)] == [3, 4, 5]  # ends


def test_events_read_inside_a_transaction_are_not_kept(user):
    recorder = running(user, events=3)
    with transaction.atomic():
        assert len(read_batch(recorder.execution_id, 0)) == 3
    assert LOG_CACHE.get(recorder.execution_id, 0, 10) == []


def test_a_budget_of_zero_keeps_nothing(user, settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "LOG_CACHE_BYTES": 0}
    execution_id = completed_run(user)
    replay(execution_id)
    with CaptureQueriesContext(connection) as queries:
        replay(execution_id)
    assert len(queries) == 1
    assert LOG_CACHE.size == 0


def test_the_cache_keeps_to_its_budget_dropping_the_executions_read_least_recently(settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "LOG_CACHE_BYTES": 2 * size_of(made_up(1, 10))}
    LOG_CACHE.put("exec_a", made_up(1, 10))
    LOG_CACHE.put("exec_b", made_up(1, 10))
    assert len(LOG_CACHE.get("exec_a", 0, 100)) == 10  # exec_b is now the least recent
    LOG_CACHE.put("exec_c", made_up(1, 10))
    assert LOG_CACHE.get("exec_b", 0, 100) == []
    assert LOG_CACHE.get("exec_a", 0, 100) == LOG_CACHE.get("exec_c", 0, 100) == made_up(1, 10)
    assert LOG_CACHE.size == 2 * size_of(made_up(1, 10))
    LOG_CACHE.put("exec_d", made_up(1, 100))  # larger than the whole budget: not kept
    assert LOG_CACHE.get("exec_d", 0, 100) == []


def test_runs_that_meet_are_merged_and_a_hole_is_never_kept():
    LOG_CACHE.put("exec_a", made_up(11, 20))
    LOG_CACHE.put("exec_a", made_up(31, 40))
    assert LOG_CACHE.get("exec_a", 0, 100) == []  # nothing held from 1
    assert LOG_CACHE.get("exec_a", 12, 100) == made_up(13, 20)  # a run ends at its end
    LOG_CACHE.put("exec_a", made_up(1, 10))  # touches 11..20
    LOG_CACHE.put("exec_a", made_up(15, 33))  # overlaps both
    assert LOG_CACHE.get("exec_a", 0, 100) == made_up(1, 40)
    assert LOG_CACHE.get("exec_a", 5, 3) == made_up(6, 8)
    assert LOG_CACHE.size == size_of(made_up(1, 40))
    LOG_CACHE.put("exec_b", [*made_up(1, 2), *made_up(4, 5)])
    assert LOG_CACHE.get("exec_b", 0, 100) == []


def log_reads(source):
    return REGISTRY.get_sample_value("executions_log_reads_total", {"source": source}) or 0


@pytest.mark.asyncio
@pytest.mark.usefixtures("settle_cancelled_tasks")
async def test_streams_replaying_one_history_read_it_from_the_database_once(user, raw_key, connect):
    execution_id = await db(completed_run, user)
    expected = await db(read_log, execution_id, 0, 1000)
    from_database, from_cache = log_reads("database"), log_reads("cache")
    bodies = []
    for last_event_id in ("0", "0", "3"):
        stream = await connect(execution_id, raw_key, **{"Last-Event-ID": last_event_id})
        bodies.append(await stream.end())
    frames, after_3 = (b"".join(item.frame for item in items) for items in (expected, expected[3:]))
    assert [body.split(b"\n\n", 2)[2] for body in bodies] == [frames, frames, after_3]
    assert log_reads("database") - from_database == len(expected)
    assert log_reads("cache") - from_cache == 2 * len(expected) - 3


@pytest.mark.asyncio
@pytest.mark.usefixtures("settle_cancelled_tasks")
async def test_a_stream_replaying_from_the_cache_stops_once_its_grant_is_gone(
    user, raw_key, connect, settings, monkeypatch
):
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}  # this test's loop's own layer
    batches_of(settings, 2)
    execution_id = await db(completed_run, user)
    await db(replay, execution_id)  # the whole history in the cache
    answered = []

    def revoked_after_the_first_batch(*args):
        batch = cached_batch(*args)
        if batch:  # the stream's replay (its topic's catching up finds nothing after 7)
            answered.append(batch)
            # As the ticker ends the stream of a key revoked meanwhile.
            [subscription] = get_hub().topics[execution_id].subscriptions
            subscription.end(GRANT_REVOKED)
        return batch

    monkeypatch.setattr(log, "cached_batch", revoked_after_the_first_batch)
    stream = await connect(execution_id, raw_key)
    await stream.end()
    assert stream.ids == [1, 2]  # the opening batch, not the batch the cache answered next
    assert [[item.seq for item in batch] for batch in answered] == [[3, 4]]
