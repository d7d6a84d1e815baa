import secrets

from django.conf import settings
from django.db import models


def new_execution_id():
    """Return a public execution id: ``exec_`` and 128 random bits, URL-safe."""
    return f"exec_{secrets.token_urlsafe(16)}"


ID_LENGTH = 40


def is_possible_id(execution_id):
    """Whether an execution could have the id ``execution_id``: not too long, and no NUL
    (which PostgreSQL cannot even compare)."""
    return len(execution_id) <= ID_LENGTH and "\x00" not in execution_id


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class Mode(models.TextChoices):
    LIVE = "live", "Live"
    TEST = "test", "Test"


class ExecutionQuerySet(models.QuerySet):
    def visible_to(self, viewer):
        """Executions ``viewer`` (an API key or a stream's grant) may see: those of its
        ``owner_id`` in its ``mode``, where None stands for every owner or both modes."""
        executions = self
        if viewer.owner_id is not None:
            executions = executions.filter(owner_id=viewer.owner_id)
        if viewer.mode is not None:
            executions = executions.filter(mode=viewer.mode)
        return executions


class Execution(models.Model):
    id = models.CharField(
        primary_key=True, max_length=ID_LENGTH, default=new_execution_id, editable=False
    )
    # Indexed by execution_owner_recent, which leads with the owner.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="executions",
        db_index=False,
    )
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.LIVE)
    workflow_id = models.CharField(max_length=100, db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    inputs = models.JSONField(default=dict, blank=True)
    outputs = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)  # noqa: DJ001 (null is the contract's "no error")
    total_nodes = models.PositiveIntegerField(null=True, blank=True)
    # The sequence number of the last recorded event; the next event takes last_seq + 1.
    last_seq = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # When the process running the workflow (executions.workflows.run_execution) last
    # said it is alive; None for executions recorded by other producers.
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "mode", "-created_at"], name="execution_owner_recent"),
            # pruneexecutions: finished executions by when they ended.
            models.Index(fields=["status", "completed_at"], name="execution_status_ended"),
            # fail_abandoned(): live executions by their last heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="execution_status_heartbeat"),
        ]

    def __str__(self):
        return self.id

    @property
    def is_finished(self):
        return self.status in TERMINAL_STATUSES

    @property
    def duration_ms(self):
        if self.started_at is None or self.completed_at is None:
            return None
        return round((self.completed_at - self.started_at).total_seconds() * 1000)


class NodeRun(models.Model):
    # Indexed by noderun_once_per_execution, which leads with the execution.
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="nodes", db_index=False
    )
    node_id = models.CharField(max_length=100)
    node_type = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    outputs = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)  # noqa: DJ001
    started_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "node_id"], name="noderun_once_per_execution"
            )
        ]

    def __str__(self):
        return f"{self.execution_id}/{self.node_id}"


class Event(models.Model):
    """One recorded event: the append-only log every stream replays from."""

    # Indexed by event_seq_unique_per_execution, which leads with the execution: a second
    # index of the execution alone (and its LIKE twin) would cost every insert and
    # a third of the log's index space for nothing.
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=40)
    # The event's JSON exactly as streams send it in "data:", encoded once at record time.
    data = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "seq"], name="event_seq_unique_per_execution"
            )
        ]

    def __str__(self):
        return f"{self.execution_id}#{self.seq} {self.type}"
