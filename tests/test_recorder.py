"""The producer API: every state change is one transaction with its event, numbered 1..N
per execution, encoded once exactly as the contract's ``data:`` line, and published to the
channel layer only after it commits."""

import asyncio
import json
import re
import threading
import time
from datetime import UTC, timedelta
from io import StringIO

import pytest
import pytest_asyncio
from asgiref.sync import SyncToAsync, sync_to_async
from channels.layers import get_channel_layer
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apikeys.asyncdb import run_in_short_session
from executions import messages, publisher
from executions.log import Item, read_log
from executions.messages import group_name
from executions.models import Event, Execution, NodeRun, Status
from executions.recorder import ExecutionFinished, ExecutionRecorder
from executions.workflows import (
    Workflow,
    create_execution,
    fail_abandoned,
    get_workflow,
    run_execution,
)
from flowmaestro.workflows import demo_node_outputs
from tests.hub import eventually

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(autouse=True)
def close_sync_thread_connections():
    """Close the connection the async twins open on asgiref's shared sync thread, so no
    test leaves a session on the test database behind."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


def utc_ms(value):
    """The contract's time format, written out independently of the product's helper."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def ms_between(start, end):
    return round((end - start).total_seconds() * 1000)


def logged(execution_id):
    return list(Event.objects.filter(execution_id=execution_id).order_by("seq"))


def types_of(execution_id):
    return [event.type for event in logged(execution_id)]


def payloads(execution_id):
    return [json.loads(event.data) for event in logged(execution_id)]


def data_line(event_type, execution_id, **fields):
    """The exact ``data:`` JSON the contract gives: type, execution_id, then the fields."""
    return json.dumps({"type": event_type, "execution_id": execution_id, **fields})


def node_started(execution_id, run):
    return data_line(
        "node:started",
        execution_id,
        node_id=run.node_id,
        node_type=run.node_type,
        started_at=utc_ms(run.started_at),
    )


def node_completed(execution_id, run):
    return data_line(
        "node:completed",
        execution_id,
        node_id=run.node_id,
        node_type=run.node_type,
        outputs=run.outputs,
        duration_ms=ms_between(run.started_at, run.completed_at),
        completed_at=utc_ms(run.completed_at),
    )


@pytest.mark.django_db
def test_a_full_run_is_numbered_1_to_n_and_each_data_line_is_the_contracts(user):
    recorder = ExecutionRecorder.create(
        owner=user, workflow_id="wf_report", inputs={"week": 3}, total_nodes=2
    )
    assert logged(recorder.execution_id) == []  # creating records no event
    recorder.start()
    with recorder.node("fetch", "http") as node:
        node.outputs = {"status": 200}
    with recorder.node("summarise", "ai_chat") as node:
        node.outputs = {"text": "All good."}
    recorder.complete({"summary": "All good."})

    execution = recorder.execution
    eid = execution.id
    fetch = NodeRun.objects.get(execution=execution, node_id="fetch")
    summarise = NodeRun.objects.get(execution=execution, node_id="summarise")
    events = logged(eid)
    assert [event.seq for event in events] == list(range(1, 9))
    assert execution.last_seq == 8
    assert execution.status == Status.COMPLETED
    assert execution.outputs == {"summary": "All good."}
    assert [event.data for event in events] == [
        data_line(
            "execution:started",
            eid,
            workflow_id="wf_report",
            started_at=utc_ms(execution.started_at),
        ),
        node_started(eid, fetch),
        node_completed(eid, fetch),
        data_line(
            "execution:progress",
            eid,
            progress=50,
            current_node="fetch",
            completed_nodes=1,
            total_nodes=2,
        ),
        node_started(eid, summarise),
        node_completed(eid, summarise),
        data_line(
            "execution:progress",
            eid,
            progress=100,
            current_node="summarise",
            completed_nodes=2,
            total_nodes=2,
        ),
        data_line(
            "execution:completed",
            eid,
            status="completed",
            outputs={"summary": "All good."},
            duration_ms=ms_between(execution.started_at, execution.completed_at),
            completed_at=utc_ms(execution.completed_at),
        ),
    ]
    assert [event.type for event in events] == [json.loads(event.data)["type"] for event in events]


@pytest.mark.django_db
def test_every_timestamp_is_utc_iso_8601_with_milliseconds_and_z(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_times", total_nodes=2)
    recorder.start()
    with recorder.node("ok", "http") as node:
        node.outputs = {}
    with pytest.raises(RuntimeError), recorder.node("bad", "http"):
        raise RuntimeError("down")
    recorder.complete()
    other = ExecutionRecorder.create(owner=user, workflow_id="wf_times")
    other.cancel()
    third = ExecutionRecorder.create(owner=user, workflow_id="wf_times")
    third.start()
    third.fail("gave up")

    stamps = [
        value
        for eid in (recorder.execution_id, other.execution_id, third.execution_id)
        for payload in payloads(eid)
        for name, value in payload.items()
        if name.endswith("_at")
    ]
    assert len(stamps) == 9
    assert all(TIMESTAMP.match(stamp) for stamp in stamps), stamps


@pytest.mark.django_db
def test_progress_is_recorded_only_when_the_total_is_known(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_open_ended")
    recorder.start()
    with recorder.node("only", "transform") as node:
        node.outputs = {"n": 1}
    assert types_of(recorder.execution_id) == [
        "execution:started",
        "node:started",
        "node:completed",
    ]


@pytest.mark.django_db
def test_explicit_progress_takes_the_share_of_nodes_and_stays_within_0_and_100(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_progress")
    recorder.start()
    recorder.progress(completed_nodes=1, total_nodes=4, current_node="a")
    recorder.progress(completed_nodes=2, progress=150)
    recorder.progress(completed_nodes=0, progress=-5)
    progress = [
        {name: payload[name] for name in list(payload)[2:]}
        for payload in payloads(recorder.execution_id)[1:]
    ]
    assert progress == [
        {"progress": 25, "current_node": "a", "completed_nodes": 1, "total_nodes": 4},
        {"progress": 100, "current_node": None, "completed_nodes": 2, "total_nodes": 4},
        {"progress": 0, "current_node": None, "completed_nodes": 0, "total_nodes": 4},
    ]
    assert recorder.execution.total_nodes == 4


@pytest.mark.django_db
def test_a_failing_node_records_node_failed_with_the_message_and_reraises(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_fail", total_nodes=3)
    recorder.start()
    with pytest.raises(ConnectionError, match="upstream timed out"), recorder.node("call", "http"):
        raise ConnectionError("upstream timed out")
    with pytest.raises(KeyError), recorder.node("lookup", "transform"):
        raise KeyError  # no message: the error names the exception's type

    eid = recorder.execution_id
    call = NodeRun.objects.get(execution_id=eid, node_id="call")
    assert (call.status, call.error, call.outputs) == (Status.FAILED, "upstream timed out", None)
    events = logged(eid)
    assert [event.type for event in events] == [
        "execution:started",
        "node:started",
        "node:failed",
        "node:started",
        "node:failed",
    ]
    assert events[2].data == data_line(
        "node:failed",
        eid,
        node_id="call",
        node_type="http",
        error="upstream timed out",
        duration_ms=ms_between(call.started_at, call.completed_at),
        failed_at=utc_ms(call.completed_at),
    )
    assert json.loads(events[4].data)["error"] == "KeyError"
    # A failed node is not progress, and only the workflow decides to fail the execution.
    assert recorder.execution.status == Status.RUNNING


@pytest.mark.django_db
def test_fail_records_execution_failed_with_error_and_failing_node(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_fail")
    recorder.start()
    recorder.fail("the model refused", node_id="summarise")
    execution = recorder.execution
    assert (execution.status, execution.error) == (Status.FAILED, "the model refused")
    assert logged(execution.id)[-1].data == data_line(
        "execution:failed",
        execution.id,
        status="failed",
        error="the model refused",
        node_id="summarise",
        completed_at=utc_ms(execution.completed_at),
    )

    without_node = ExecutionRecorder.create(owner=user, workflow_id="wf_fail")
    without_node.start()
    without_node.fail(ValueError("bad input"))
    assert payloads(without_node.execution_id)[-1]["node_id"] is None
    assert payloads(without_node.execution_id)[-1]["error"] == "bad input"


@pytest.mark.django_db
@pytest.mark.parametrize("started", [False, True], ids=["pending", "running"])
def test_cancel_records_execution_cancelled(user, started):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_cancel")
    if started:
        recorder.start()
    recorder.cancel()
    execution = recorder.execution
    assert execution.status == Status.CANCELLED
    assert logged(execution.id)[-1].seq == execution.last_seq == (2 if started else 1)
    assert logged(execution.id)[-1].data == data_line(
        "execution:cancelled",
        execution.id,
        status="cancelled",
        cancelled_at=utc_ms(execution.completed_at),
    )


def finish_by(recorder, how):
    if how == "complete":
        recorder.complete({"done": True})
    elif how == "fail":
        recorder.fail("broken")
    else:
        recorder.cancel()


def enter_node(recorder):
    with recorder.node("late", "http"):
        pass


LATE_CALLS = {
    "start": lambda recorder: recorder.start(),
    "progress": lambda recorder: recorder.progress(completed_nodes=1, total_nodes=2),
    "start_node": lambda recorder: recorder.start_node("late", "http"),
    "node": enter_node,
    "complete": lambda recorder: recorder.complete({"again": True}),
    "fail": lambda recorder: recorder.fail("again"),
    "cancel": lambda recorder: recorder.cancel(),
}


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["complete", "fail", "cancel"])
@pytest.mark.parametrize("call", sorted(LATE_CALLS))
def test_recording_after_a_terminal_event_raises_and_records_nothing(user, how, call):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_done", total_nodes=2)
    recorder.start()
    finish_by(recorder, how)
    before = recorder.execution
    log_before = [(event.seq, event.data) for event in logged(before.id)]

    with pytest.raises(ExecutionFinished) as raised:
        LATE_CALLS[call](recorder)

    assert (raised.value.execution_id, raised.value.status) == (before.id, before.status)
    after = recorder.execution
    assert [(event.seq, event.data) for event in logged(after.id)] == log_before
    assert (after.status, after.last_seq, after.completed_at, after.outputs, after.error) == (
        before.status,
        before.last_seq,
        before.completed_at,
        before.outputs,
        before.error,
    )
    assert not NodeRun.objects.filter(execution_id=after.id, node_id="late").exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_share_one_gapless_sequence(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_parallel")
    recorder.start()
    writers, per_writer = 4, 25
    barrier = threading.Barrier(writers)
    errors = []

    def write(number):
        try:
            own = ExecutionRecorder(recorder.execution_id)  # as a separate producer would
            barrier.wait()
            for step in range(per_writer):
                own.progress(completed_nodes=number * per_writer + step, total_nodes=100)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    events = logged(recorder.execution_id)
    assert [event.seq for event in events] == list(range(1, 102))
    assert recorder.execution.last_seq == 101
    assert sorted(json.loads(event.data)["completed_nodes"] for event in events[1:]) == list(
        range(100)
    )


SENTINEL = {"type": "test.sentinel"}


async def next_message(layer, channel):
    """Return the next message on ``channel``, which must come."""
    return await asyncio.wait_for(layer.receive(channel), 10)


async def assert_nothing_published(layer, channel):
    """Assert nothing came to ``channel`` yet: a sentinel sent now is the next message.

    Whatever the recorder published is queued on this loop's sender by the time its call
    returns; once the sender has sent it all, it would come first. (No receive with a
    timeout: on Python 3.11 redis-py may not honour its cancel.)
    """
    sender = publisher.sender_for(asyncio.get_running_loop())
    await eventually(lambda: sender.unsent == 0)
    await layer.send(channel, SENTINEL)
    assert await next_message(layer, channel) == SENTINEL


@pytest_asyncio.fixture
async def listener(user, settings):
    """A fresh channel in a new execution's group: ``(recorder, layer, channel)``."""
    # A layer of this test's own: channels-redis receives on one event loop only.
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS}
    recorder = await ExecutionRecorder.acreate(owner=user, workflow_id="wf_listened")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_name(recorder.execution_id)
    await layer.group_add(group, channel)
    yield recorder, layer, channel
    await layer.group_discard(group, channel)


class Rollback(Exception):
    pass


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_rolled_back_event_is_neither_logged_nor_published(listener):
    recorder, layer, channel = listener

    def start_then_roll_back():
        with transaction.atomic():
            recorder.start()
            raise Rollback

    with pytest.raises(Rollback):
        await run_in_short_session(start_then_roll_back)

    await assert_nothing_published(layer, channel)
    execution = await sync_to_async(lambda: recorder.execution)()
    assert (execution.status, execution.last_seq) == (Status.PENDING, 0)
    assert await Event.objects.filter(execution_id=recorder.execution_id).acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_event_is_published_only_once_its_transaction_commits(listener):
    recorder, layer, channel = listener
    recorded, release = threading.Event(), threading.Event()

    def start_in_open_transaction():
        with transaction.atomic():
            recorder.start()
            recorded.set()
            release.wait(10)

    writer = asyncio.ensure_future(run_in_short_session(start_in_open_transaction))
    try:
        assert await asyncio.to_thread(recorded.wait, 10)
        await assert_nothing_published(layer, channel)
    finally:
        release.set()
        await writer

    message = await next_message(layer, channel)
    event = await Event.objects.aget(execution_id=recorder.execution_id)
    assert 0 < time.time() - message.pop("recorded_at") < 60  # when it was committed
    assert message == {
        "type": "execution.events",
        "execution_id": recorder.execution_id,
        "events": [
            [1, "execution:started", f"id: 1\nevent: execution:started\ndata: {event.data}\n\n"]
        ],
    }


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_async_twins_record_like_the_sync_api(user):
    recorder = await ExecutionRecorder.acreate(owner=user, workflow_id="wf_async", total_nodes=2)
    await recorder.astart()
    async with recorder.anode("fetch", "http") as node:
        node.outputs = {"status": 200}
    with pytest.raises(ValueError, match="no rows"):
        async with recorder.anode("parse", "transform"):
            raise ValueError("no rows")
    await recorder.aprogress(completed_nodes=2, current_node="parse")
    await recorder.acomplete({"rows": 0})

    events = await sync_to_async(logged)(recorder.execution_id)
    assert [(event.seq, event.type) for event in events] == [
        (1, "execution:started"),
        (2, "node:started"),
        (3, "node:completed"),
        (4, "execution:progress"),
        (5, "node:started"),
        (6, "node:failed"),
        (7, "execution:progress"),
        (8, "execution:completed"),
    ]
    assert json.loads(events[2].data)["outputs"] == {"status": 200}
    assert json.loads(events[5].data)["error"] == "no rows"
    execution = await Execution.objects.aget(pk=recorder.execution_id)
    assert (execution.status, execution.outputs) == (Status.COMPLETED, {"rows": 0})

    with pytest.raises(ExecutionFinished):
        await recorder.afail("too late")
    with pytest.raises(ExecutionFinished):
        await recorder.acancel()
    assert await Event.objects.filter(execution_id=recorder.execution_id).acount() == 8


def demo_execution(user, **inputs):
    return create_execution(get_workflow("wf_demo"), owner=user, inputs=inputs)


@pytest.mark.django_db
def test_run_execution_runs_the_demo_workflow_to_completion(user):
    recorder = demo_execution(user, nodes=2, delay_ms=0)
    run_execution(recorder.execution_id)
    execution = recorder.execution
    assert execution.status == Status.COMPLETED
    assert execution.outputs == {"nodes_run": 2, "last": demo_node_outputs(2, "http")}
    assert types_of(execution.id) == [
        "execution:started",
        *["node:started", "node:completed", "execution:progress"] * 2,
        "execution:completed",
    ]
    assert [payload["progress"] for payload in payloads(execution.id)[3::3]] == [50, 100]


@pytest.mark.django_db
def test_run_execution_records_the_failing_node_in_execution_failed(user):
    recorder = demo_execution(user, nodes=3, delay_ms=0, fail_at=2)
    run_execution(recorder.execution_id)
    execution = recorder.execution
    message = "Node 2 failed as requested (fail_at=2)."
    assert (execution.status, execution.error) == (Status.FAILED, message)
    assert types_of(execution.id) == [
        "execution:started",
        "node:started",
        "node:completed",
        "execution:progress",
        "node:started",
        "node:failed",
        "execution:failed",
    ]
    failed_node, failed = payloads(execution.id)[-2:]
    assert (failed_node["node_id"], failed_node["error"]) == ("node_2", message)
    assert {name: failed[name] for name in ("status", "error", "node_id")} == {
        "status": "failed",
        "error": message,
        "node_id": "node_2",
    }


@pytest.mark.django_db
def test_run_execution_of_a_cancelled_execution_records_nothing_more(user):
    recorder = demo_execution(user, nodes=2, delay_ms=0)
    recorder.cancel()
    run_execution(recorder.execution_id)
    assert types_of(recorder.execution_id) == ["execution:cancelled"]
    assert recorder.execution.status == Status.CANCELLED


@pytest.mark.django_db
def test_run_execution_stops_at_the_next_node_boundary_after_a_cancel(user, monkeypatch):
    recorder = demo_execution(user, nodes=3, delay_ms=0)

    def cancel_during_the_first_node(number, node_type):
        ExecutionRecorder(recorder.execution_id).cancel()
        return demo_node_outputs(number, node_type)

    monkeypatch.setattr("flowmaestro.workflows.demo_node_outputs", cancel_during_the_first_node)
    run_execution(recorder.execution_id)
    assert types_of(recorder.execution_id) == [
        "execution:started",
        "node:started",
        "execution:cancelled",
    ]
    execution = recorder.execution
    assert execution.status == Status.CANCELLED
    node = NodeRun.objects.get(execution=execution, node_id="node_1")
    assert (node.status, node.completed_at) == (Status.CANCELLED, execution.completed_at)


@pytest.mark.django_db
def test_run_execution_fails_the_execution_when_the_worker_stops_during_a_node(user, monkeypatch):
    recorder = demo_execution(user, nodes=2, delay_ms=0)

    def stop_the_worker(number, node_type):
        raise SystemExit(1)

    monkeypatch.setattr("flowmaestro.workflows.demo_node_outputs", stop_the_worker)
    with pytest.raises(SystemExit):
        run_execution(recorder.execution_id)
    execution = recorder.execution
    assert (execution.status, execution.error) == (
        Status.FAILED,
        "The worker stopped during the run (SystemExit).",
    )
    assert types_of(execution.id) == ["execution:started", "node:started", "execution:failed"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "how",
    [
        "fail",
        "cancel",
    ],
)
def test_a_terminal_event_leaves_no_node_running(user, how):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stopped")
    recorder.start()
    recorder.start_node("open", "http")
    finish_by(recorder, how)
    execution = recorder.execution
    node = NodeRun.objects.get(execution=execution, node_id="open")
    expected_status = Status.FAILED if how == "fail" else Status.CANCELLED
    assert (node.status, node.completed_at) == (expected_status, execution.completed_at)
    assert node.duration_ms == ms_between(node.started_at, node.completed_at)


@pytest.mark.django_db
def test_run_execution_of_an_unregistered_workflow_fails_it(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_nowhere")
    run_execution(recorder.execution_id)
    execution = recorder.execution
    assert execution.status == Status.FAILED
    assert types_of(execution.id) == ["execution:failed"]
    assert payloads(execution.id)[0]["error"] == "Workflow 'wf_nowhere' is not registered."
    assert payloads(execution.id)[0]["node_id"] is None


# Publishing never waits on the channel layer, and keeps the order of the commits.


@pytest.fixture
def held_layer(monkeypatch):
    """Hold every send to the channel layer until ``release()``; ``sent`` lists the
    ``(execution_id, seq)`` of each event in the order it was sent."""
    release, sent = threading.Event(), []

    async def held_apublish(msg):
        await asyncio.to_thread(release.wait, 10)
        sent.extend((msg["execution_id"], seq) for seq, _, _ in msg["events"])

    monkeypatch.setattr(publisher, "apublish", held_apublish)
    return release, sent


@pytest.mark.django_db(transaction=True)
def test_recording_returns_while_the_channel_layer_has_not_taken_the_event(user, held_layer):
    release, sent = held_layer
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_held")
    recorder.start()
    for number in range(1, 5):
        recorder.progress(completed_nodes=number, total_nodes=4)
    recorder.complete({})
    assert sent == []  # five events committed while the layer held the first send
    release.set()
    assert publisher.flush(10)
    assert sent == [(recorder.execution_id, seq) for seq in range(1, 7)]


@pytest.mark.django_db(transaction=True)
def test_a_batch_records_its_events_in_one_transaction_and_publishes_them_in_order(
    user, held_layer
):
    release, sent = held_layer
    release.set()
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_batch", total_nodes=200)
    recorder.start()
    with CaptureQueriesContext(connection) as queries, recorder.batch():
        for number in range(1, 201):
            recorder.progress(completed_nodes=number)
        assert recorder.execution.last_seq == 201
        assert Event.objects.filter(execution_id=recorder.execution_id).count() == 1
    writes = [q["sql"] for q in queries if not q["sql"].startswith("SELECT COUNT")]
    # SAVEPOINT-free: the lock (an UPDATE), one UPDATE of last_seq, one INSERT of the 200.
    assert len([sql for sql in writes if sql.startswith(("UPDATE", "INSERT"))]) == 3
    events = logged(recorder.execution_id)
    assert [event.seq for event in events] == list(range(1, 202))
    assert [json.loads(e.data)["completed_nodes"] for e in events[1:]] == list(range(1, 201))
    assert recorder.execution.last_seq == 201
    assert publisher.flush(10)
    assert sent == [(recorder.execution_id, seq) for seq in range(1, 202)]


def test_a_run_of_events_goes_in_messages_of_at_most_100_events_and_256_kib():
    def items(count, size, start=1):
        return [Item(seq, "execution:progress", b"x" * size) for seq in range(start, start + count)]

    def shape(msgs):
        return [[seq for seq, _, _ in msg["events"]] for msg in msgs]

    assert shape(messages.build("exec_a", items(250, 10))) == [
        list(range(1, 101)),
        list(range(101, 201)),
        list(range(201, 251)),
    ]
    # 100 KiB frames: two fit in 256 KiB; a frame over the limit goes alone.
    large = [*items(3, 100 * 1024), *items(1, 300 * 1024, start=4), *items(1, 10, start=5)]
    assert shape(messages.build("exec_a", large)) == [[1, 2], [3], [4], [5]]
    parsed = [messages.parse(msg) for msg in messages.build("exec_a", items(3, 10))]
    assert parsed == [("exec_a", items(3, 10))]


@pytest.mark.django_db(transaction=True)
def test_an_error_in_a_batch_records_none_of_its_events(user, held_layer):
    release, sent = held_layer
    release.set()
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_batch")
    recorder.start()
    with pytest.raises(Rollback), recorder.batch():
        recorder.progress(completed_nodes=1, total_nodes=2)
        with recorder.node("half", "transform") as node:
            node.outputs = {}
        raise Rollback
    assert [event.seq for event in logged(recorder.execution_id)] == [1]
    assert not NodeRun.objects.filter(execution_id=recorder.execution_id).exists()
    assert recorder.execution.last_seq == 1
    assert publisher.flush(10)
    assert sent == [(recorder.execution_id, 1)]


@pytest.mark.django_db(transaction=True)
def test_a_batch_may_hold_node_runs_and_the_terminal_event(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_batch", total_nodes=2)
    with recorder.batch():
        recorder.start()
        for node_id in ("a", "b"):
            with recorder.node(node_id, "transform") as node:
                node.outputs = {"node": node_id}
        recorder.complete({"nodes": 2})
    types = [event.type for event in logged(recorder.execution_id)]
    assert types == [
        "execution:started",
        "node:started",
        "node:completed",
        "execution:progress",
        "node:started",
        "node:completed",
        "execution:progress",
        "execution:completed",
    ]
    assert recorder.execution.status == Status.COMPLETED
    with pytest.raises(ExecutionFinished), recorder.batch():
        recorder.progress(completed_nodes=2)


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_and_single_events_share_one_gapless_sequence(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_parallel")
    recorder.start()
    writers, per_writer = 4, 50
    barrier = threading.Barrier(writers)
    errors = []

    def write(number):
        try:
            own = ExecutionRecorder(recorder.execution_id)
            barrier.wait()
            for start in range(0, per_writer, 10):
                if number % 2:
                    with own.batch():
                        for step in range(start, start + 10):
                            own.progress(completed_nodes=number * per_writer + step)
                else:
                    for step in range(start, start + 10):
                        own.progress(completed_nodes=number * per_writer + step)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    events = logged(recorder.execution_id)
    assert [event.seq for event in events] == list(range(1, 202))
    assert sorted(json.loads(event.data)["completed_nodes"] for event in events[1:]) == list(
        range(200)
    )


# A worker that dies leaves no execution running forever.


@pytest.fixture
def heartbeat_settings(settings):
    settings.EXECUTIONS = {
        **settings.EXECUTIONS,
        "HEARTBEAT_INTERVAL": 0.05,
        "HEARTBEAT_TIMEOUT": 30.0,
    }


@pytest.mark.django_db(transaction=True)
def test_a_running_workflow_writes_heartbeats(user, heartbeat_settings, monkeypatch):
    beats = []

    def slow(recorder, inputs):
        first = recorder.execution.heartbeat_at
        deadline = time.monotonic() + 10
        while recorder.execution.heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.02)
        beats.extend([first, recorder.execution.heartbeat_at])
        return {}

    workflow = Workflow(id="wf_slow", name="Slow", run=slow)
    monkeypatch.setattr("executions.workflows.get_workflow", lambda workflow_id: workflow)
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_slow")
    run_execution(recorder.execution_id)
    assert beats[0] is not None
    assert beats[1] > beats[0]
    assert recorder.execution.status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_an_execution_whose_heartbeats_stopped_is_failed_with_a_clear_error(user):
    stale = ExecutionRecorder.create(owner=user, workflow_id="wf_abandoned")
    stale.start()
    fresh = ExecutionRecorder.create(owner=user, workflow_id="wf_alive")
    fresh.start()
    elsewhere = ExecutionRecorder.create(owner=user, workflow_id="wf_own_producer")
    elsewhere.start()  # recorded by a producer of its own: no heartbeat at all
    now = timezone.now()
    Execution.objects.filter(pk=stale.execution_id).update(heartbeat_at=now - timedelta(minutes=5))
    Execution.objects.filter(pk=fresh.execution_id).update(heartbeat_at=now)

    assert fail_abandoned() == [stale.execution_id]

    execution = stale.execution
    assert execution.status == Status.FAILED
    assert execution.error.startswith("The worker running this execution stopped")
    assert logged(stale.execution_id)[-1].type == "execution:failed"
    assert fresh.execution.status == elsewhere.execution.status == Status.RUNNING
    assert fail_abandoned() == []


@pytest.mark.django_db(transaction=True)
def test_failabandoned_prints_the_executions_it_failed(user):
    stale = ExecutionRecorder.create(owner=user, workflow_id="wf_abandoned")
    stale.start()
    Execution.objects.filter(pk=stale.execution_id).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    out = StringIO()
    call_command("failabandoned", stdout=out, stderr=StringIO())
    assert out.getvalue().split() == [stale.execution_id]


# Retention: pruneexecutions.


def finished_executions(owner, days_ago, events=1):
    """Completed executions (``execution:started``, ``events`` progress events, the
    terminal one) that ended these numbers of days ago; their ids."""
    ids = []
    for days in days_ago:
        recorder = ExecutionRecorder.create(owner=owner, workflow_id="wf_old")
        recorder.start()
        for number in range(events):
            recorder.progress(completed_nodes=number, total_nodes=events)
        recorder.complete({})
        ended = timezone.now() - timedelta(days=days)
        Execution.objects.filter(pk=recorder.execution_id).update(completed_at=ended)
        ids.append(recorder.execution_id)
    return ids


@pytest.mark.django_db(transaction=True)
def test_pruneexecutions_deletes_finished_executions_older_than_the_age_with_their_log(user):
    old = finished_executions(user, [40], events=3) + finished_executions(user, [35], events=50)
    (recent,) = finished_executions(user, [5], events=3)
    running = ExecutionRecorder.create(owner=user, workflow_id="wf_running")
    running.start()
    Execution.objects.filter(pk=running.execution_id).update(
        created_at=timezone.now() - timedelta(days=90)
    )
    out = StringIO()

    call_command("pruneexecutions", "--older-than", "30d", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "2 execution(s) would be deleted."
    call_command("pruneexecutions", "--older-than", "30d", "--batch-size", "1", stdout=out)

    assert "Deleted 2 execution(s) and 57 event(s)." in out.getvalue()
    assert set(Execution.objects.values_list("pk", flat=True)) == {recent, running.execution_id}
    assert not Event.objects.filter(execution_id__in=old).exists()


@pytest.mark.parametrize("age", ["a month", "0d", "3w"])
def test_pruneexecutions_refuses_an_age_it_cannot_read(age):
    with pytest.raises(CommandError, match="30d"):
        call_command("pruneexecutions", "--older-than", age)


def test_pruneexecutions_without_an_age_or_a_retention_refuses_to_guess(settings):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "RETENTION": None}
    with pytest.raises(CommandError, match="RETENTION"):
        call_command("pruneexecutions")


@pytest.mark.django_db(transaction=True)
def test_pruneexecutions_keeps_the_configured_retention_by_default(settings, user):
    settings.EXECUTIONS = {**settings.EXECUTIONS, "RETENTION": timedelta(days=7)}
    kept, _ = finished_executions(user, days_ago=[3, 10])
    out = StringIO()
    call_command("pruneexecutions", stdout=out)
    assert out.getvalue().strip() == "Deleted 1 execution(s) and 3 event(s)."
    assert list(Execution.objects.values_list("pk", flat=True)) == [kept]


@pytest.mark.django_db(transaction=True)
def test_pruning_while_producers_record_and_a_stream_replays_loses_no_kept_event(user):
    old = finished_executions(user, days_ago=[40] * 30, events=40)
    kept = finished_executions(user, days_ago=[1], events=600)[0]
    running = [ExecutionRecorder.create(owner=user, workflow_id="wf_live") for _ in range(3)]
    failures, replays = [], []
    pruned = threading.Event()

    def record(recorder):
        try:
            recorder.start()
            while not pruned.is_set():
                recorder.progress(completed_nodes=0, total_nodes=1)
            recorder.complete({})
        except Exception as exc:  # any failure fails the test below
            failures.append(exc)
        finally:
            connections.close_all()

    def replay():
        try:
            while not pruned.is_set():
                replays.append([item.seq for item in read_log(kept, 0, 10_000)])
        except Exception as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=record, args=(r,)) for r in running]
    workers.append(threading.Thread(target=replay))
    for worker in workers:
        worker.start()
    try:
        call_command(
            "pruneexecutions", "--older-than", "30d", "--batch-size", "4", stdout=StringIO()
        )
    finally:
        pruned.set()
        for worker in workers:
            worker.join(30)

    assert failures == []
    assert not Execution.objects.filter(pk__in=old).exists()
    assert not Event.objects.filter(execution_id__in=old).exists()
    assert replays and all(seqs == list(range(1, 603)) for seqs in replays)
    for recorder in running:
        execution = Execution.objects.get(pk=recorder.execution_id)
        seqs = list(Event.objects.filter(execution=execution).values_list("seq", flat=True))
        assert execution.status == Status.COMPLETED
        assert seqs == list(range(1, execution.last_seq + 1))


def statements_of(record):
    with CaptureQueriesContext(connection) as queries:
        record()
    return [query["sql"].split()[0] for query in queries]


@pytest.mark.django_db(transaction=True)
def test_an_event_costs_a_lock_that_numbers_it_and_one_insert(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_statements", total_nodes=9)
    # The lock, then the fields the event changed (status, started_at).
    assert statements_of(recorder.start) == ["BEGIN", "UPDATE", "UPDATE", "INSERT", "COMMIT"]


@pytest.mark.django_db(transaction=True)
def test_progress_after_the_recorders_own_last_event_costs_one_statement(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_statements", total_nodes=9)
    recorder.start()
    assert statements_of(lambda: recorder.progress(completed_nodes=1)) == ["WITH"]
    assert statements_of(lambda: recorder.progress(completed_nodes=2, total_nodes=4)) == ["WITH"]
    execution = Execution.objects.get(pk=recorder.execution_id)
    assert (execution.last_seq, execution.total_nodes) == (3, 4)
    assert [(e.seq, e.type) for e in logged(recorder.execution_id)] == [
        (1, "execution:started"),
        (2, "execution:progress"),
        (3, "execution:progress"),
    ]
    assert json.loads(logged(recorder.execution_id)[-1].data)["total_nodes"] == 4


@pytest.mark.django_db(transaction=True)
def test_progress_after_another_producers_event_locks_the_row_instead(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_statements", total_nodes=9)
    recorder.start()
    ExecutionRecorder(recorder.execution_id).progress(completed_nodes=1)
    assert statements_of(lambda: recorder.progress(completed_nodes=2)) == [
        "WITH",  # last_seq is no longer the one this recorder knew: nothing written
        "BEGIN",
        "UPDATE",
        "INSERT",
        "COMMIT",
    ]
    assert [event.seq for event in logged(recorder.execution_id)] == [1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_progress_after_another_process_cancelled_the_run_is_refused(user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_statements", total_nodes=9)
    recorder.start()
    ExecutionRecorder(recorder.execution_id).cancel()
    with pytest.raises(ExecutionFinished):
        recorder.progress(completed_nodes=1)
    assert [event.type for event in logged(recorder.execution_id)] == [
        "execution:started",
        "execution:cancelled",
    ]
