from django.core.management.base import BaseCommand

from executions.workflows import fail_abandoned


class Command(BaseCommand):
    help = (
        "Fail the executions whose worker stopped sending heartbeats (killed or lost) more "
        "than EXECUTIONS['HEARTBEAT_TIMEOUT'] seconds ago. Workers and server processes do "
        "it on their own; run it from cron where neither runs for long."
    )

    def handle(self, *args, **options):
        failed = fail_abandoned()
        for execution_id in failed:
            self.stdout.write(execution_id)
        self.stderr.write(f"{len(failed)} abandoned execution(s) failed.")
