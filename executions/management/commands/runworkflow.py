import json
import signal
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apikeys.exceptions import ValidationError
from executions.models import Mode
from executions.workflows import create_execution, get_workflow, registry, run_execution


class Command(BaseCommand):
    help = (
        "Start an execution of a registered workflow and run it to its end in this process. "
        "The execution id is printed alone on the first line, at once."
    )

    def add_arguments(self, parser):
        parser.add_argument("workflow_id")
        parser.add_argument("--owner", required=True, help="Username of the execution's owner.")
        parser.add_argument("--inputs", default="{}", help="The inputs, as a JSON object.")
        parser.add_argument("--mode", choices=list(Mode.values), default=Mode.LIVE)

    def handle(self, *args, workflow_id, owner, inputs, mode, **options):
        # Stopped by a supervisor (SIGTERM) as by Ctrl-C, so the run records that it stopped.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        workflow = get_workflow(workflow_id)
        if workflow is None:
            known = ", ".join(sorted(registry())) or "none"
            raise CommandError(f"Unknown workflow {workflow_id!r}. Registered: {known}.")
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(owner)
        except user_model.DoesNotExist:
            raise CommandError(f"No user {owner!r}.") from None
        try:
            parsed = json.loads(inputs)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--inputs is not valid JSON: {exc}.") from None
        try:
            recorder = create_execution(workflow, owner=user, inputs=parsed, mode=mode)
        except ValidationError as exc:
            raise CommandError(f"{exc.message} {json.dumps(exc.details)}") from None
        self.stdout.write(recorder.execution_id)
        self.stdout.flush()
        sys.stdout.flush()
        try:
            run_execution(recorder.execution_id)
        except KeyboardInterrupt:
            raise CommandError(
                f"Interrupted: {recorder.execution_id} is recorded as failed."
            ) from None
        execution = recorder.execution
        self.stderr.write(f"{execution.id} {execution.status}")
