"""The site's one workflow."""

from executions.workflows import Input, workflow


@workflow(
    "wf_sync_accounts",
    name="Sync accounts",
    description="Fetches the accounts to sync and stores them.",
    inputs={"accounts": Input("integer", label="Accounts", default=2)},
    total_nodes=lambda inputs: 2,
)
def sync_accounts(recorder, inputs):
    with recorder.node("fetch", "http") as node:
        node.outputs = {"fetched": inputs["accounts"]}
    with recorder.node("store", "transform") as node:
        node.outputs = {"stored": inputs["accounts"]}
    return {"synced": inputs["accounts"]}
