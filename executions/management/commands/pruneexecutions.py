import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from executions.models import TERMINAL_STATUSES, Execution

DURATION = re.compile(r"^(\d+)([dhm])$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text):
    """``"30d"``, ``"12h"`` or ``"90m"`` as a timedelta."""
    match = DURATION.match(text)
    if match is None:
        raise CommandError(f"--older-than {text!r}: give a number and d, h or m, e.g. 30d.")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete finished executions (completed, failed, cancelled) that ended longer ago "
        "than --older-than, with their node runs and event log, in batches. Running and "
        "pending executions are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="e.g. 30d, 12h, 90m")
        parser.add_argument(
            "--batch-size", type=int, default=500, help="executions deleted per transaction"
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, older_than, batch_size, dry_run, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - parse_age(older_than)
        old = Execution.objects.filter(status__in=TERMINAL_STATUSES, completed_at__lt=cutoff)
        if dry_run:
            self.stdout.write(f"{old.count()} execution(s) would be deleted.")
            return
        executions = events = 0
        while True:
            # Small transactions: an execution's node runs and events go with it (one
            # DELETE each per batch), and a batch of long runs is many rows.
            ids = list(old.order_by("completed_at").values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            _, deleted = Execution.objects.filter(pk__in=ids).delete()
            executions += deleted.get("executions.Execution", 0)
            events += deleted.get("executions.Event", 0)
        self.stdout.write(f"Deleted {executions} execution(s) and {events} event(s).")
