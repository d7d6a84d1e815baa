"""The REST endpoints around the stream: workflows, execute, list/get/cancel executions."""

import logging
from urllib.parse import urlencode

from django.db import transaction
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.response import Response

from apikeys.exceptions import ResourceNotFound, ServiceUnavailable, ValidationError
from apikeys.openapi import extend_scoped_schema
from apikeys.payloads import unstorable_text
from apikeys.responses import error_response, format_timestamp, success_body
from apikeys.views import ScopedAPIView

from . import schema
from .lookups import VisibleExecutions, visible_execution, with_node_runs
from .models import Status
from .pagination import paginate
from .recorder import ExecutionFinished, ExecutionRecorder
from .serializers import (
    ExecuteRequestSerializer,
    ExecuteResponseSerializer,
    ExecutionSerializer,
    StreamTokenSerializer,
    WorkflowSerializer,
)
from .tasks import run_execution_task
from .tokens import mint
from .workflows import create_execution, get_workflow, registry

logger = logging.getLogger(__name__)


def find_workflow(workflow_id):
    workflow = get_workflow(workflow_id)
    if workflow is None:
        raise ResourceNotFound("workflow", workflow_id)
    return workflow


def find_execution(request, execution_id):
    execution = visible_execution(request.auth, execution_id)
    if execution is None:
        raise ResourceNotFound("execution", execution_id)
    [execution] = with_node_runs(execution)
    return execution


class WorkflowList(ScopedAPIView):
    required_scopes = ("workflows:read",)

    @extend_scoped_schema(
        operation_id="workflows_list",
        summary="List workflows",
        parameters=schema.PAGE_PARAMETERS,
        responses=schema.envelope(WorkflowSerializer, many=True),
    )
    def get(self, request):
        workflows = sorted(registry().values(), key=lambda workflow: workflow.id)
        page, pagination = paginate(request.query_params, workflows)
        data = WorkflowSerializer(page, many=True).data
        return Response(success_body(request, data, pagination))


class WorkflowDetail(ScopedAPIView):
    required_scopes = ("workflows:read",)

    @extend_scoped_schema(
        operation_id="workflows_get",
        summary="Get a workflow",
        responses=schema.envelope(WorkflowSerializer),
    )
    def get(self, request, workflow_id):
        data = WorkflowSerializer(find_workflow(workflow_id)).data
        return Response(success_body(request, data))


class WorkflowExecute(ScopedAPIView):
    required_scopes = ("workflows:read", "workflows:execute")

    @extend_scoped_schema(
        operation_id="workflows_execute",
        summary="Execute a workflow",
        description="Validates the inputs, creates a pending execution and queues it; answers "
        "at once. Follow it with GET executions/{id}/events, under the same prefix.",
        request=ExecuteRequestSerializer,
        responses=schema.envelope(ExecuteResponseSerializer, status_code=202),
    )
    def post(self, request, workflow_id):
        workflow = find_workflow(workflow_id)
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise ValidationError(
                "The body must be a JSON object.", details={"body": "Not an object."}
            )
        inputs = body.get("inputs")
        recorder = create_execution(
            workflow,
            owner=request.user,
            inputs={} if inputs is None else inputs,
            mode=request.auth.mode,
        )
        try:
            run_execution_task.enqueue(recorder.execution_id)
        except Exception as exc:
            logger.exception("Queueing execution %s failed", recorder.execution_id)
            recorder.fail("The execution could not be queued.")
            raise ServiceUnavailable("The task queue is unavailable. Retry shortly.") from exc
        execution = recorder.execution
        data = {
            "execution_id": execution.id,
            "workflow_id": execution.workflow_id,
            "status": execution.status,
            "inputs": execution.inputs,
        }
        return Response(success_body(request, data), status=status.HTTP_202_ACCEPTED)


class ExecutionList(ScopedAPIView):
    required_scopes = ("executions:read",)

    @extend_scoped_schema(
        operation_id="executions_list",
        summary="List executions, newest first",
        parameters=[
            *schema.PAGE_PARAMETERS,
            OpenApiParameter("workflow_id", str, description="Only this workflow's executions."),
            OpenApiParameter("status", str, enum=Status.values, description="Only this status."),
        ],
        responses=schema.envelope(ExecutionSerializer, many=True),
    )
    def get(self, request):
        params = request.query_params
        filters = {}
        workflow_id = params.get("workflow_id")
        if workflow_id:
            if unstorable_text(workflow_id):
                raise ValidationError(
                    "workflow_id holds a character no workflow id has.",
                    details={"workflow_id": "Must not hold a NUL or a lone surrogate."},
                )
            filters["workflow_id"] = workflow_id
        wanted_status = params.get("status")
        if wanted_status:
            if wanted_status not in Status.values:
                raise ValidationError(
                    f"Unknown status {wanted_status!r}.",
                    details={"status": f"Must be one of: {', '.join(Status.values)}."},
                )
            filters["status"] = wanted_status
        executions = VisibleExecutions(request.auth, **filters)
        page, pagination = paginate(params, executions, count=executions.count())
        data = ExecutionSerializer(page, many=True).data
        return Response(success_body(request, data, pagination))


class ExecutionDetail(ScopedAPIView):
    required_scopes = ("executions:read",)

    @extend_scoped_schema(
        operation_id="executions_get",
        summary="Get an execution",
        responses=schema.envelope(ExecutionSerializer),
    )
    def get(self, request, execution_id):
        data = ExecutionSerializer(find_execution(request, execution_id)).data
        return Response(success_body(request, data))


class ExecutionCancel(ScopedAPIView):
    required_scopes = ("executions:read", "executions:cancel")

    @extend_scoped_schema(
        operation_id="executions_cancel",
        summary="Cancel an execution",
        description="Records execution:cancelled at once (streams see it and close); the "
        "running workflow stops at its next node boundary. 400 unless pending or running.",
        request=None,
        responses=schema.envelope(ExecutionSerializer),
    )
    def post(self, request, execution_id):
        execution = find_execution(request, execution_id)
        try:
            ExecutionRecorder(execution.pk).cancel()
        except ExecutionFinished as finished:
            raise ValidationError(
                f"Execution {execution.pk} is already {finished.status} and cannot be cancelled.",
                details={"status": finished.status},
            ) from None
        data = ExecutionSerializer(find_execution(request, execution_id)).data
        return Response(success_body(request, data))


class ExecutionStreamToken(ScopedAPIView):
    required_scopes = ("executions:read",)

    @extend_scoped_schema(
        operation_id="executions_stream_token",
        summary="Get a token to stream an execution without a header",
        description="A signed token for this execution's event stream, on this key's behalf: "
        "`GET .../events?token=...` needs no header, so a browser's `EventSource` on another "
        "origin can open it. It must be used before `expires_at`; the stream it opens lasts "
        "until its terminal event, or until the key is revoked or expires.",
        request=None,
        responses=schema.envelope(StreamTokenSerializer, status_code=201),
    )
    def post(self, request, execution_id):
        if visible_execution(request.auth, execution_id, ("id",)) is None:
            raise ResourceNotFound("execution", execution_id)
        token, expires_at = mint(execution_id, request.auth)
        events = reverse("executions:execution-events", kwargs={"execution_id": execution_id})
        data = {
            "token": token,
            "expires_at": format_timestamp(expires_at),
            "url": request.build_absolute_uri(f"{events}?{urlencode({'token': token})}"),
        }
        return Response(success_body(request, data), status=status.HTTP_201_CREATED)


@transaction.non_atomic_requests  # no database work: no transaction under ATOMIC_REQUESTS
def not_found(request, *args, **kwargs):
    """Answer any unknown path under the API with the contract's 404, never an HTML page."""
    return error_response(request, ResourceNotFound("endpoint", request.path))
