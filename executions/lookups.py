"""The hot reads of executions, compiled once per process (``apikeys.compiled``): an
execution by id as a viewer sees it, the executions it sees (their count and a page), and
their node runs."""

from types import SimpleNamespace

from django.db import router
from django.db.models import Count, Value

from apikeys.compiled import CompiledQuery, concrete_attnames

from .models import Execution, NodeRun, is_possible_id


def visible(owner_id=None, mode=None, **filters):
    """The queryset a compiled read starts from: ``visible_to()`` a viewer that sees
    ``owner_id``'s executions in ``mode`` (None: every owner, both modes), filtered."""
    viewer = SimpleNamespace(owner_id=owner_id, mode=mode)
    return Execution.objects.visible_to(viewer).filter(**filters)


VISIBLE_EXECUTION = CompiledQuery(
    lambda fields, execution_id, **seen: (
        visible(pk=execution_id, **seen).order_by().values_list(*fields)[:1]
    )
)
EXECUTION_PAGE = CompiledQuery(
    lambda fields, offset, limit, **seen: visible(**seen).values_list(*fields)[
        offset : offset + limit
    ]
)
EXECUTION_COUNT = CompiledQuery(
    lambda _, **seen: (
        visible(**seen)
        .order_by()
        # Grouped by a constant, which Django leaves out of GROUP BY: one COUNT(*) row.
        .annotate(everything=Value(1))
        .values("everything")
        .annotate(count=Count("*"))
        .values_list("count")
    )
)
# One SQL per number of executions: at most a page's worth of shapes.
NODE_RUNS = CompiledQuery(
    lambda fields, **execution_ids: NodeRun.objects.filter(
        execution_id__in=list(execution_ids.values())
    ).values_list(*fields)
)


def seen_by(viewer):
    """The values that ``Execution.objects.visible_to(viewer)`` filters on."""
    sees = {"owner_id": viewer.owner_id, "mode": viewer.mode}
    return {name: value for name, value in sees.items() if value is not None}


def visible_execution(viewer, execution_id, fields=None):
    """Return the execution ``execution_id`` if ``viewer`` (an API key or a stream's grant)
    may see it, else None; only ``fields`` loaded (attnames, in the model's order) when
    given."""
    if not is_possible_id(execution_id):
        return None
    fields = fields or concrete_attnames(Execution)
    using = router.db_for_read(Execution)
    rows = VISIBLE_EXECUTION.rows(using, fields, execution_id=execution_id, **seen_by(viewer))
    return Execution.from_db(using, fields, rows[0]) if rows else None


class VisibleExecutions:
    """The executions ``viewer`` may see, newest first, of those that match ``filters``
    (``workflow_id``, ``status``): their ``count()`` and a slice (a page) with their node
    runs, through compiled reads."""

    def __init__(self, viewer, **filters):
        self.seen = {**seen_by(viewer), **filters}

    def count(self):
        [(count,)] = EXECUTION_COUNT.rows(router.db_for_read(Execution), **self.seen)
        return count

    def __getitem__(self, page):
        fields = concrete_attnames(Execution)
        using = router.db_for_read(Execution)
        limit = page.stop - page.start
        rows = EXECUTION_PAGE.rows(using, fields, offset=page.start, limit=limit, **self.seen)
        return with_node_runs(*(Execution.from_db(using, fields, row) for row in rows))


def with_node_runs(*executions):
    """Give each of ``executions`` its ``node_runs``, in their order, as
    ``ExecutionSerializer`` shows them, in one query; return them as a list."""
    runs = {execution.pk: [] for execution in executions}
    if runs:
        fields = concrete_attnames(NodeRun)
        using = router.db_for_read(NodeRun)
        execution_ids = {f"id{index}": pk for index, pk in enumerate(runs)}
        for row in NODE_RUNS.rows(using, fields, **execution_ids):
            node_run = NodeRun.from_db(using, fields, row)
            runs[node_run.execution_id].append(node_run)
    for execution in executions:
        execution.node_runs = runs[execution.pk]
    return list(executions)
