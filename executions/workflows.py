"""The workflow registry: workflows are code, declared in an app's ``workflows.py``.

    from executions.workflows import Input, workflow

    @workflow(
        "wf_report",
        name="Weekly report",
        inputs={"week": Input("integer", label="ISO week", required=True)},
        total_nodes=lambda inputs: 2,
    )
    def weekly_report(recorder, inputs):
        with recorder.node("fetch", "http") as node:
            node.outputs = fetch(inputs["week"])
        ...
        return {"url": "..."}   # the execution's outputs

Every installed app's ``workflows`` module is imported when the registry is first used.
"""

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connections
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from apikeys.exceptions import ValidationError
from apikeys.responses import format_timestamp

from .conf import get_config
from .models import Execution, Status
from .recorder import ExecutionFinished, ExecutionRecorder, UnstorableEvent

logger = logging.getLogger(__name__)

LIVE_STATUSES = (Status.PENDING, Status.RUNNING)

INPUT_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


@dataclass(frozen=True)
class Input:
    type: str
    label: str = ""
    required: bool = False
    description: str = ""
    default: object = None
    # Bounds of an integer or number input, inclusive.
    minimum: object = None
    maximum: object = None

    def describe(self):
        described = {
            "type": self.type,
            "label": self.label,
            "required": self.required,
            "description": self.description,
        }
        for name in ("default", "minimum", "maximum"):
            if getattr(self, name) is not None:
                described[name] = getattr(self, name)
        return described

    def problem_with(self, value):
        """Return what is wrong with ``value`` for this input, or None."""
        expected = INPUT_TYPES[self.type]
        # bool is an int in Python, but not an integer or number input.
        if not isinstance(value, expected) or (isinstance(value, bool) and self.type != "boolean"):
            return f"Expected {self.type}."
        if self.minimum is not None and value < self.minimum:
            return f"Must be at least {self.minimum}."
        if self.maximum is not None and value > self.maximum:
            return f"Must be at most {self.maximum}."
        return None


@dataclass(frozen=True)
class Workflow:
    id: str
    name: str
    run: object
    description: str = ""
    version: int = 1
    inputs: dict = field(default_factory=dict)
    total_nodes: object = None  # callable(inputs) -> int | None
    created_at: datetime = field(default_factory=timezone.now)
    updated_at: datetime = field(default_factory=timezone.now)

    def clean_inputs(self, inputs):
        """Return ``inputs`` with defaults applied; raise ``ValidationError`` naming each bad
        field."""
        if not isinstance(inputs, dict):
            raise ValidationError("inputs must be an object.", details={"inputs": "Not an object."})
        errors = {}
        cleaned = {}
        for name, spec in self.inputs.items():
            if name not in inputs or inputs[name] is None:
                if spec.required:
                    errors[name] = "This input is required."
                elif spec.default is not None:
                    cleaned[name] = spec.default
                continue
            problem = spec.problem_with(inputs[name])
            if problem:
                errors[name] = problem
                continue
            cleaned[name] = inputs[name]
        for name in inputs.keys() - self.inputs.keys():
            errors[name] = "Unknown input."
        if errors:
            raise ValidationError("Some inputs are not valid.", details={"inputs": errors})
        return cleaned

    def count_nodes(self, inputs):
        return self.total_nodes(inputs) if self.total_nodes else None


_registry = {}
_discovered = False


def workflow(
    workflow_id,
    *,
    name,
    description="",
    version=1,
    inputs=None,
    total_nodes=None,
    created_at=None,
    updated_at=None,
):
    """Register the decorated ``run(recorder, inputs) -> outputs`` as a workflow.

    ``created_at``/``updated_at`` (aware datetimes) default to when the registry loaded it.
    """

    def register(run):
        loaded_at = timezone.now()
        _registry[workflow_id] = Workflow(
            id=workflow_id,
            name=name,
            run=run,
            description=description,
            version=version,
            inputs=inputs or {},
            total_nodes=total_nodes,
            created_at=created_at or loaded_at,
            updated_at=updated_at or created_at or loaded_at,
        )
        return run

    return register


def registry():
    """Return ``{workflow_id: Workflow}`` for every declared workflow."""
    global _discovered
    if not _discovered:
        autodiscover_modules("workflows")
        _discovered = True
    return _registry


def get_workflow(workflow_id):
    return registry().get(workflow_id)


def create_execution(workflow, *, owner, inputs, mode="live"):
    """Validate ``inputs`` and create a pending execution; return its recorder."""
    cleaned = workflow.clean_inputs(inputs)
    try:
        return ExecutionRecorder.create(
            owner=owner,
            workflow_id=workflow.id,
            inputs=cleaned,
            mode=mode,
            total_nodes=workflow.count_nodes(cleaned),
        )
    except UnstorableEvent as exc:
        raise ValidationError(str(exc), details={"inputs": str(exc)}) from None


class Heartbeat:
    """While a workflow runs, a thread writes its execution's ``heartbeat_at`` every
    ``HEARTBEAT_INTERVAL`` seconds; ``fail_abandoned()`` fails an execution whose
    heartbeats stopped, so a killed worker leaves no execution running forever."""

    def __init__(self, execution_id):
        self.execution_id = execution_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self.beat, name=f"heartbeat-{execution_id}", daemon=True
        )

    def __enter__(self):
        self.write()
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopped.set()
        self.thread.join()

    def write(self):
        Execution.objects.filter(pk=self.execution_id, status__in=LIVE_STATUSES).update(
            heartbeat_at=timezone.now()
        )

    def beat(self):
        try:
            while not self.stopped.wait(get_config()["HEARTBEAT_INTERVAL"]):
                try:
                    self.write()
                except Exception as exc:  # the next beat tries again
                    logger.warning("Heartbeat of %s failed: %r", self.execution_id, exc)
        finally:
            connections.close_all()


def fail_abandoned(now=None):
    """Fail every execution whose runner's heartbeats stopped more than
    ``HEARTBEAT_TIMEOUT`` seconds ago; return their ids. Workers call it before each run,
    server processes now and then, and ``manage.py failabandoned`` on demand."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=get_config()["HEARTBEAT_TIMEOUT"])
    abandoned = list(
        Execution.objects.filter(status__in=LIVE_STATUSES, heartbeat_at__lt=cutoff).values_list(
            "pk", "heartbeat_at"
        )
    )
    failed = []
    for execution_id, heartbeat_at in abandoned:
        message = (
            "The worker running this execution stopped (no heartbeat since "
            f"{format_timestamp(heartbeat_at)}): it was killed or lost."
        )
        try:
            ExecutionRecorder(execution_id).fail(message)
        except ExecutionFinished:
            continue
        logger.warning("Execution %s abandoned by its worker: failed.", execution_id)
        failed.append(execution_id)
    return failed


def run_execution(execution_id):
    """Run a pending execution's workflow to its end, recording everything.

    Cancellation stops the run at its next node boundary: the recorder refuses to record
    into a finished execution, and that refusal ends the run quietly.
    """
    fail_abandoned()
    with Heartbeat(execution_id):
        _run(execution_id)


def _run(execution_id):
    recorder = ExecutionRecorder(execution_id)
    execution = recorder.execution
    workflow = get_workflow(execution.workflow_id)
    try:
        if workflow is None:
            recorder.fail(f"Workflow {execution.workflow_id!r} is not registered.")
            return
        recorder.start()
        try:
            outputs = workflow.run(recorder, execution.inputs)
        except ExecutionFinished:
            raise
        except Exception as exc:
            logger.exception("Execution %s failed", execution_id)
            error = exc
            if isinstance(exc, DatabaseError):
                # Most likely the connection was lost while the run recorded an event.
                error = f"The database failed during the run: {exc}"
            recorder.fail(error, node_id=recorder.failed_node_id)
            return
        except BaseException as exc:
            # The worker is shutting down (SIGTERM, Ctrl-C): say so rather than leave the
            # execution running forever.
            recorder.fail(f"The worker stopped during the run ({type(exc).__name__}).")
            raise
        try:
            recorder.complete(outputs)
        except ExecutionFinished:
            raise
        except Exception as exc:
            # The outputs cannot be stored (not JSON, a NUL, too large) or the database
            # refused them: the run ends failed all the same, and its streams end.
            logger.exception("Execution %s: recording its outputs failed", execution_id)
            recorder.fail(f"The workflow's outputs could not be recorded: {exc}")
    except ExecutionFinished as finished:
        logger.info("Execution %s stopped: it is %s.", execution_id, finished.status)
