"""Retention of finished executions: which ones are old enough to go, and deleting them
in short transactions (``pruneexecutions``, ``bench/log_scale.py``)."""

from datetime import timedelta

from django.utils import timezone

from .conf import get_config
from .models import TERMINAL_STATUSES, Execution


def configured_retention():
    """``EXECUTIONS["RETENTION"]``: a positive ``timedelta``, or None (keep everything)."""
    return get_config()["RETENTION"]


def is_valid_retention(value):
    return value is None or (isinstance(value, timedelta) and value > timedelta(0))


def expired(older_than):
    """The finished executions that ended more than ``older_than`` ago, oldest first.

    Running and pending executions never are: their streams and producers still use them.
    """
    cutoff = timezone.now() - older_than
    return Execution.objects.filter(status__in=TERMINAL_STATUSES, completed_at__lt=cutoff).order_by(
        "completed_at"
    )


def delete_batch(executions, batch_size):
    """Delete the first ``batch_size`` of ``executions`` with their node runs and events,
    in one short transaction; return ``(executions, events)`` deleted.

    An execution's rows go in one ``DELETE`` per table and batch, by the execution's
    index; a producer recording into other executions, or a stream replaying one that is
    kept, never waits on it.
    """
    ids = list(executions.values_list("pk", flat=True)[:batch_size])
    if not ids:
        return 0, 0
    _, deleted = Execution.objects.filter(pk__in=ids).delete()
    return deleted.get("executions.Execution", 0), deleted.get("executions.Event", 0)
