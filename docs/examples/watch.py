"""Start a workflow with FlowMaestro's official Python SDK and watch it live.

pip install flowmaestro==0.1.0
FLOWMAESTRO_API_KEY=fm_live_... python watch.py [base_url]
"""

import os
import sys

from flowmaestro import FlowMaestroClient, NotFoundError

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"

with FlowMaestroClient(os.environ["FLOWMAESTRO_API_KEY"], base_url=base_url) as client:
    for workflow in client.workflows.list()["data"]:
        print(f"{workflow['id']}: {workflow['name']} (inputs: {', '.join(workflow['inputs'])})")

    started = client.workflows.execute("wf_demo", inputs={"nodes": 3, "delay_ms": 500})
    execution_id = started["data"]["execution_id"]
    print(f"started {execution_id}")

    for event in client.executions.stream(execution_id):
        print(event["type"], event.get("node_id", ""), event.get("progress", ""))
        if event["type"] in ("execution:completed", "execution:failed", "execution:cancelled"):
            break

    execution = client.executions.wait_for_completion(execution_id)
    print(execution["status"], execution["outputs"])

    try:
        client.executions.get("exec_does_not_exist")
    except NotFoundError as error:
        print(f"as expected: {error}")
