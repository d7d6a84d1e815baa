import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from executions.retention import configured_retention, delete_batch, expired

DURATION = re.compile(r"^(\d+)([dhm])$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text):
    """``"30d"``, ``"12h"`` or ``"90m"`` as a timedelta."""
    match = DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise CommandError(
            f"--older-than {text!r}: give a positive number and d, h or m, e.g. 30d."
        )
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete finished executions (completed, failed, cancelled) that ended longer ago "
        "than --older-than (default: EXECUTIONS['RETENTION']), with their node runs and "
        "event log, in batches. Running and pending executions are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", help="e.g. 30d, 12h, 90m (default: EXECUTIONS['RETENTION'])"
        )
        parser.add_argument(
            "--batch-size", type=int, default=500, help="executions deleted per transaction"
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, older_than, batch_size, dry_run, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if older_than is not None:
            age = parse_age(older_than)
        elif (age := configured_retention()) is None:
            raise CommandError(
                "Nothing to prune by: EXECUTIONS['RETENTION'] is None (keep everything). "
                "Set it, or give --older-than."
            )
        old = expired(age)
        if dry_run:
            self.stdout.write(f"{old.count()} execution(s) would be deleted.")
            return
        executions = events = 0
        while True:
            deleted, deleted_events = delete_batch(old, batch_size)
            if not deleted:
                break
            executions += deleted
            events += deleted_events
        self.stdout.write(f"Deleted {executions} execution(s) and {events} event(s).")
