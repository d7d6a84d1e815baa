"""The field sets the contract (../shared/spec/api.md) names, for tests to compare against."""

PAGINATION_FIELDS = {
    "page",
    "per_page",
    "total_count",
    "total_pages",
    "has_next",
    "has_prev",
    "has_more",
}
EXECUTION_FIELDS = {
    "id",
    "workflow_id",
    "status",
    "inputs",
    "outputs",
    "error",
    "started_at",
    "completed_at",
    "created_at",
    "duration_ms",
    "nodes",
}
NODE_FIELDS = {
    "node_id",
    "node_type",
    "status",
    "outputs",
    "error",
    "started_at",
    "completed_at",
    "duration_ms",
}
WORKFLOW_FIELDS = {
    "id",
    "name",
    "description",
    "version",
    "inputs",
    "created_at",
    "updated_at",
}

# Each endpoint of the contract (method, path where the demo site mounts the API) and the
# scopes it requires.
CONTRACT = {
    ("get", "/api/v1/workflows"): ["workflows:read"],
    ("get", "/api/v1/workflows/{workflow_id}"): ["workflows:read"],
    ("post", "/api/v1/workflows/{workflow_id}/execute"): ["workflows:read", "workflows:execute"],
    ("get", "/api/v1/executions"): ["executions:read"],
    ("get", "/api/v1/executions/{execution_id}"): ["executions:read"],
    ("post", "/api/v1/executions/{execution_id}/cancel"): ["executions:read", "executions:cancel"],
    ("post", "/api/v1/executions/{execution_id}/stream-token"): ["executions:read"],
    ("get", "/api/v1/executions/{execution_id}/events"): ["executions:read"],
}
