"""Executions recorded through the producer API, for the tests that stream them."""

import contextlib

from executions.recorder import ExecutionRecorder


def completed_run(user, nodes=2):
    """Record a whole run with every non-terminal event type; return its id."""
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream", total_nodes=nodes)
    recorder.start()
    with recorder.node("fetch", "http") as node:
        node.outputs = {"status": 200, "body": 'ü "quoted"\nline'}
    with contextlib.suppress(TimeoutError), recorder.node("call", "ai_chat"):
        raise TimeoutError("model timed out")
    recorder.progress(completed_nodes=1, current_node="call", progress=60)
    recorder.complete({"ok": True})
    return recorder.execution_id


def running(user, events=1, mode="live"):
    """A running execution with ``events`` events (started, then progress); its recorder."""
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream", mode=mode)
    recorder.start()
    for number in range(1, events):
        recorder.progress(completed_nodes=number, total_nodes=100)
    return recorder
