"""The live pages, for the site's logged-in users: the executions they may see, and one
execution followed live in the browser.

A user sees here exactly what its session opens on the event stream
(``SessionGrant.for_user()``): its own executions in both modes, or, for staff, every
execution. The pages extend ``EXECUTIONS["PAGE_BASE_TEMPLATE"]``, and the live page
follows the stream of ``executions.urls``, which the host mounts beside ``page_urls``.
"""

import json
from functools import wraps
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from apikeys.responses import format_timestamp

from .conf import get_config
from .events import EXECUTION_PROGRESS
from .grants import SessionGrant
from .models import TERMINAL_STATUSES, Event, Execution, Status
from .recorder import ExecutionFinished, ExecutionRecorder
from .workflows import get_workflow

NAMESPACE = "execution_pages"  # page_urls.app_name
PAGE_SIZE = 25
# How often the list fetches its rows again while one of them is pending or running.
ROWS_REFRESH_MS = 3000
# The pages load their scripts and stylesheets from the site's static files, read the
# event stream and their rows from the site, and post their forms to it; nothing inline.
# Framing is left to the site's X-Frame-Options: a frame-ancestors here would override it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'self'; form-action 'self'; object-src 'none'"
)


def content_security_policy(view):
    """Send the pages' ``Content-Security-Policy`` with every answer of ``view``, unless it
    already has one. The pages' own views send it, not a middleware: the host's other
    pages keep whatever policy the host gives them (Django 6's ``SECURE_CSP`` leaves a
    header that a view has set as it is)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapper


def visible_executions(user):
    """The executions ``user`` may see: those its session may stream."""
    return Execution.objects.visible_to(SessionGrant.for_user(user))


def page_url(name, *args, request=None):
    """Return the path of the page ``name`` (``"execution-detail"``...) under the instance
    of the pages that serves ``request``."""
    current_app = request.resolver_match.namespace if request is not None else None
    return reverse(f"{NAMESPACE}:{name}", args=args, current_app=current_app)


def live_page_url(execution_id):
    """Return the path of an execution's live page, or None where the host does not mount
    the pages (the admin links to it only where it exists)."""
    try:
        return page_url("execution-detail", execution_id)
    except NoReverseMatch:
        return None


def format_duration(ms):
    """Return a duration in milliseconds as people read it: ``"850 ms"``, ``"4.2 s"``,
    ``"3 min 5 s"``, ``"2 h 10 min"``; None stays None. The live page's script writes
    durations the same way (``formatDuration()``)."""
    if ms is None:
        return None
    ms = int(ms)
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        tenths = ms // 100
        return f"{tenths // 10} s" if tenths % 10 == 0 else f"{tenths // 10}.{tenths % 10} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def elapsed_ms(since, now):
    return max(0, round((now - since).total_seconds() * 1000))


def pretty_json(value):
    """Return ``value`` as indented JSON text, as the script's ``JSON.stringify(value,
    null, 2)`` writes it; None when there is nothing to show. The template autoescapes it:
    an output is data, never markup."""
    if value is None:
        return None
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


def workflow_label(workflow_id):
    workflow = get_workflow(workflow_id)
    return f"{workflow.name} ({workflow_id})" if workflow is not None else workflow_id


def render_page(request, template, context):
    context = {"base_template": get_config()["PAGE_BASE_TEMPLATE"], **context}
    return render(request, template, context)


class ExecutionFilterForm(forms.Form):
    """The list's filters; each field is named after the model field it filters."""

    status = forms.ChoiceField(
        required=False, choices=[("", "Any status"), *Status.choices], label="Status"
    )
    workflow_id = forms.ChoiceField(required=False, label="Workflow")

    def __init__(self, data, *, workflow_ids):
        super().__init__(data, label_suffix="")
        self.fields["workflow_id"].choices = [
            ("", "Any workflow"),
            *((workflow_id, workflow_label(workflow_id)) for workflow_id in workflow_ids),
        ]

    def filters(self):
        """Return the ``filter()`` arguments of the fields given with a valid value."""
        self.is_valid()
        return {name: value for name, value in self.cleaned_data.items() if value}


@content_security_policy
@never_cache
@login_required
@require_GET
def execution_list(request):
    """The executions the user may see, newest first, filtered and paginated. With
    ``?partial=rows`` only the table's rows: the page's script fetches them again while
    one of them is pending or running."""
    visible = visible_executions(request.user)
    workflow_ids = visible.order_by("workflow_id").values_list("workflow_id", flat=True).distinct()
    form = ExecutionFilterForm(request.GET, workflow_ids=workflow_ids)
    executions = visible.filter(**form.filters()).select_related("owner")
    page = Paginator(executions, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page_obj": page,
        "executions": [
            {
                "execution": execution,
                "url": page_url("execution-detail", execution.pk, request=request),
                "duration": format_duration(execution.duration_ms),
            }
            for execution in page
        ],
        "show_owner": request.user.is_staff,
        "list_url": page_url("execution-list", request=request),
        "refresh_ms": ROWS_REFRESH_MS,
    }
    if request.GET.get("partial") == "rows":
        return render_page(request, "executions/_execution_rows.html", context)
    return render_page(request, "executions/execution_list.html", context)


def current_progress(execution):
    """Return the progress the page opens with: ``(percent, completed_nodes, total_nodes)``,
    as the last ``execution:progress`` up to the execution's ``last_seq`` said; percent is
    None while a running execution's progress is not known (an indeterminate bar)."""
    if execution.status == Status.COMPLETED:
        return 100, None, None
    logged = (
        Event.objects.filter(
            execution=execution, type=EXECUTION_PROGRESS, seq__lte=execution.last_seq
        )
        .order_by("-seq")
        .values_list("data", flat=True)
        .first()
    )
    if logged is None:
        if execution.total_nodes:
            return 0, 0, execution.total_nodes
        return (None if execution.status == Status.RUNNING else 0), None, None
    data = json.loads(logged)
    return data["progress"], data.get("completed_nodes"), data.get("total_nodes")


def progress_text(percent, completed_nodes, total_nodes):
    """Return the progress in words; the live page's script writes it the same way."""
    if percent is None:
        return "Not known yet"
    if total_nodes:
        return f"{percent}% ({completed_nodes} of {total_nodes} nodes)"
    return f"{percent}%"


def result_summary(status, duration):
    """Return how the execution ended, in words; the live page's script writes it the same
    way."""
    if status not in TERMINAL_STATUSES:
        return ""
    label = Status(status).label
    if duration is None:
        return f"{label}."
    return f"{label} {'in' if status == Status.COMPLETED else 'after'} {duration}."


def node_context(run, now):
    finished = run.status != Status.RUNNING
    return {
        "id": run.node_id,
        "type": run.node_type,
        "status": run.status,
        "status_label": run.get_status_display(),
        "started_at": format_timestamp(run.started_at),
        "duration": format_duration(
            run.duration_ms if finished else elapsed_ms(run.started_at, now)
        ),
        "outputs_json": pretty_json(run.outputs),
        "error": run.error,
    }


@content_security_policy
@never_cache
@login_required
@require_GET
def execution_detail(request, execution_id):
    """One execution as the database holds it, which the page's script then follows on the
    event stream from the execution's ``last_seq`` on."""
    execution = get_object_or_404(
        visible_executions(request.user).select_related("owner"), pk=execution_id
    )
    # Read after the execution, the node runs may be newer than its last_seq, never older:
    # the script applies the events after last_seq again, and it keeps a node that it
    # shows finished from going back to running, so the page ends up right either way.
    runs = list(execution.nodes.order_by("started_at", "id"))
    now = timezone.now()
    finished = execution.is_finished
    if execution.started_at is None:
        duration = None
    elif finished:
        duration = format_duration(execution.duration_ms)
    else:
        duration = format_duration(elapsed_ms(execution.started_at, now))
    percent, completed_nodes, total_nodes = current_progress(execution)
    events_url = None
    if not finished:
        events = reverse("executions:execution-events", kwargs={"execution_id": execution.pk})
        events_url = f"{events}?{urlencode({'last_event_id': execution.last_seq})}"
    # The contract's states are live, reconnecting and finished: a page that has not yet
    # connected is not live, and says what it is doing.
    stream_state, stream_label = (
        ("finished", "Finished") if finished else ("reconnecting", "Connecting…")
    )
    context = {
        "execution": execution,
        "workflow": get_workflow(execution.workflow_id),
        "owner": execution.owner.get_username(),
        "finished": finished,
        "started_at": format_timestamp(execution.started_at),
        "server_time": format_timestamp(now),
        "duration": duration,
        "progress": percent,
        "progress_text": progress_text(percent, completed_nodes, total_nodes),
        "nodes": [node_context(run, now) for run in runs],
        "outputs_json": pretty_json(execution.outputs),
        "result_summary": result_summary(execution.status, duration),
        "events_url": events_url,
        "stream_state": stream_state,
        "stream_state_label": stream_label,
        "list_url": page_url("execution-list", request=request),
        "cancel_url": page_url("execution-cancel", execution.pk, request=request),
    }
    return render_page(request, "executions/execution_detail.html", context)


@require_POST
def execution_cancel(request, execution_id):
    """Cancel an execution, then go back to its page. Whoever may see an execution (its
    owner, or staff) may cancel it; a finished one is left as it is, with a message."""
    detail_url = page_url("execution-detail", execution_id, request=request)
    if not request.user.is_authenticated:
        # Back to the page after logging in: the cancel URL itself answers only POST.
        return redirect_to_login(detail_url)
    execution = get_object_or_404(visible_executions(request.user), pk=execution_id)
    try:
        ExecutionRecorder(execution.pk).cancel()
    except ExecutionFinished as finished:
        messages.info(
            request,
            f"Execution {execution.pk} is already {finished.status}: there is nothing to cancel.",
            fail_silently=True,
        )
    else:
        messages.success(request, f"Execution {execution.pk} is cancelled.", fail_silently=True)
    return redirect(detail_url)
