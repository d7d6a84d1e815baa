"""Workflow runs as tasks of Django's tasks framework, for whatever backend the site uses."""

try:
    from django.tasks import task
except ImportError:  # Django < 6: the django-tasks backport
    from django_tasks import task

from .workflows import run_execution


@task()
def run_execution_task(execution_id):
    """Run a pending execution's workflow to its end (in a worker)."""
    run_execution(execution_id)
