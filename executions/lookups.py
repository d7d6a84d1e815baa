"""The hot reads of executions, compiled once per process (``apikeys.compiled``): an
execution by id as a viewer sees it, the executions it sees (their count and a page), and
their node runs."""

from types import SimpleNamespace

from django.db import router
from django.db.models import Count, Value

from apikeys.compiled import CompiledQuery, concrete_attnames, rows_together

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


def visible_execution_with_node_runs(viewer, execution_id):
    """``visible_execution()`` with its ``node_runs``, the two read in one round trip (the
    node runs of an execution ``viewer`` may not see are read and left)."""
    if not is_possible_id(execution_id):
        return None
    fields, using = concrete_attnames(Execution), router.db_for_read(Execution)
    if router.db_for_read(NodeRun) != using:
        execution = visible_execution(viewer, execution_id)
        return execution and with_node_runs(execution)[0]
    rows, node_runs = rows_together(
        using,
        (VISIBLE_EXECUTION, fields, {"execution_id": execution_id, **seen_by(viewer)}),
        (NODE_RUNS, concrete_attnames(NodeRun), {"id0": execution_id}),
    )
    if not rows:
        return None
    [execution] = executions_with(node_runs, Execution.from_db(using, fields, rows[0]))
    return execution


class VisibleExecutions:
    """The executions ``viewer`` may see, newest first, of those that match ``filters``
    (``workflow_id``, ``status``), through compiled reads: their ``len()``, and slices
    (pages) with their node runs. A slice reads its page and the count in one round trip,
    and ``len()`` after it answers from that count."""

    def __init__(self, viewer, **filters):
        self.seen = {**seen_by(viewer), **filters}
        self.counted = None

    def __len__(self):
        if self.counted is None:
            [(self.counted,)] = EXECUTION_COUNT.rows(router.db_for_read(Execution), **self.seen)
        return self.counted

    def __getitem__(self, page):
        fields = concrete_attnames(Execution)
        using = router.db_for_read(Execution)
        window = {"offset": page.start, "limit": page.stop - page.start}
        rows, [(self.counted,)] = rows_together(
            using,
            (EXECUTION_PAGE, fields, {**window, **self.seen}),
            (EXECUTION_COUNT, (), self.seen),
        )
        return with_node_runs(*(Execution.from_db(using, fields, row) for row in rows))


def with_node_runs(*executions):
    """Give each of ``executions`` its ``node_runs``, in their order, as
    ``ExecutionSerializer`` shows them, in one query; return them as a list."""
    if not executions:
        return []
    execution_ids = {f"id{index}": execution.pk for index, execution in enumerate(executions)}
    rows = NODE_RUNS.rows(router.db_for_read(NodeRun), concrete_attnames(NodeRun), **execution_ids)
    return executions_with(rows, *executions)


def executions_with(node_run_rows, *executions):
    """Give each of ``executions`` its ``node_runs`` from ``node_run_rows`` (of
    ``NODE_RUNS``), in their order; return them as a list."""
    using, fields = router.db_for_read(NodeRun), concrete_attnames(NodeRun)
    runs = {execution.pk: [] for execution in executions}
    for row in node_run_rows:
        node_run = NodeRun.from_db(using, fields, row)
        runs[node_run.execution_id].append(node_run)
    for execution in executions:
        execution.node_runs = runs[execution.pk]
    return list(executions)
