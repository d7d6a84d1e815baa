"""The hot reads of executions, compiled once per process (``apikeys.compiled``): an
execution by id as a viewer sees it, and an execution's node runs."""

from types import SimpleNamespace

from django.db import router

from apikeys.compiled import CompiledQuery, concrete_attnames

from .models import Execution, NodeRun, is_possible_id

VISIBLE_EXECUTION = CompiledQuery(
    lambda fields, execution_id, owner_id=None, mode=None: (
        Execution.objects.visible_to(SimpleNamespace(owner_id=owner_id, mode=mode))
        .filter(pk=execution_id)
        .order_by()
        .values_list(*fields)[:1]
    )
)
NODE_RUNS = CompiledQuery(
    lambda fields, execution_id: NodeRun.objects.filter(execution_id=execution_id).values_list(
        *fields
    )
)


def visible_execution(viewer, execution_id, fields=None):
    """Return the execution ``execution_id`` if ``viewer`` (an API key or a stream's grant)
    may see it, else None; only ``fields`` loaded (attnames, in the model's order) when
    given."""
    if not is_possible_id(execution_id):
        return None
    fields = fields or concrete_attnames(Execution)
    sees = {"owner_id": viewer.owner_id, "mode": viewer.mode}
    using = router.db_for_read(Execution)
    rows = VISIBLE_EXECUTION.rows(
        using,
        fields,
        execution_id=execution_id,
        **{name: value for name, value in sees.items() if value is not None},
    )
    return Execution.from_db(using, fields, rows[0]) if rows else None


def with_node_runs(execution):
    """Give ``execution`` its ``node_runs``, in their order, as ``ExecutionSerializer``
    shows them; return it."""
    fields = concrete_attnames(NodeRun)
    using = router.db_for_read(NodeRun)
    rows = NODE_RUNS.rows(using, fields, execution_id=execution.pk)
    execution.node_runs = [NodeRun.from_db(using, fields, row) for row in rows]
    return execution
