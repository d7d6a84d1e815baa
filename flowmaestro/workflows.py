"""The demo site's workflows."""

import time
from datetime import UTC, datetime

from executions.workflows import Input, workflow

NODE_TYPES = ("ai_chat", "http", "transform")


def demo_node_outputs(number, node_type):
    """Deterministic outputs of the demo's node ``number``."""
    if node_type == "ai_chat":
        return {"model": "demo-llm", "text": f"Step {number}: the data looks consistent."}
    if node_type == "http":
        return {"status": 200, "url": f"https://example.com/api/items/{number}", "items": number}
    return {"records": [{"step": number, "value": number * number}]}


@workflow(
    "wf_demo",
    name="Demo pipeline",
    description="Runs a chain of AI, HTTP and transform nodes with a delay between them.",
    inputs={
        "nodes": Input(
            "integer",
            label="Nodes",
            description="How many nodes to run.",
            default=3,
            minimum=0,
            maximum=1000,
        ),
        "delay_ms": Input(
            "integer",
            label="Delay (ms)",
            description="Time each node takes.",
            default=500,
            minimum=0,
            maximum=60_000,
        ),
        "fail_at": Input(
            "integer",
            label="Fail at",
            description="The number of a node that fails (from 1).",
            minimum=1,
        ),
    },
    total_nodes=lambda inputs: inputs["nodes"],
    created_at=datetime(2026, 11, 1, tzinfo=UTC),
    updated_at=datetime(2026, 11, 24, tzinfo=UTC),
)
def demo(recorder, inputs):
    results = []
    for number in range(1, inputs["nodes"] + 1):
        node_type = NODE_TYPES[(number - 1) % len(NODE_TYPES)]
        with recorder.node(f"node_{number}", node_type) as node:
            time.sleep(inputs["delay_ms"] / 1000)
            if inputs.get("fail_at") == number:
                raise RuntimeError(f"Node {number} failed as requested (fail_at={number}).")
            node.outputs = demo_node_outputs(number, node_type)
        results.append(node.outputs)
    return {"nodes_run": len(results), "last": results[-1] if results else None}
