"""The live pages (``executions.pages``), the demo site's login and base template, and the
read-only execution admin, through Django's test client: status codes, the HTML and its
``data-*`` hooks as the database holds them, escaping, and the cancel form. What the
pages' scripts do in a browser is for the browser tests."""

import re
from html.parser import HTMLParser
from io import StringIO

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse
from pytest_django.asserts import (
    assertContains,
    assertNotContains,
    assertTemplateNotUsed,
    assertTemplateUsed,
)

from executions.admin import ExecutionAdmin
from executions.models import Execution, Status
from executions.pages import PAGE_SIZE, format_duration
from executions.recorder import ExecutionRecorder
from flowmaestro.management.commands.demo import Command as DemoCommand
from tests.runs import completed_run

pytestmark = pytest.mark.django_db

LIST_URL = reverse("execution_pages:execution-list")
LOGIN_URL = "/accounts/login/"
MARKUP = "<script>alert(1)</script>"
ESCAPED_MARKUP = "&lt;script&gt;alert(1)&lt;/script&gt;"


def detail_url(execution_id):
    return reverse("execution_pages:execution-detail", args=[execution_id])


def cancel_url(execution_id):
    return reverse("execution_pages:execution-cancel", args=[execution_id])


def events_url(execution_id):
    return reverse("executions:execution-events", kwargs={"execution_id": execution_id})


class Elements(HTMLParser):
    """The start tags of a page outside ``<template>`` (a template's content is inert: it
    is no part of the document a browser shows)."""

    def __init__(self):
        super().__init__()
        self.found, self.in_template = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "template":
            self.in_template += 1
        elif not self.in_template:
            self.found.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "template":
            self.in_template -= 1


def elements(response, attribute, tag=None):
    """Return the attributes of the elements of ``response`` that carry ``attribute``."""
    parser = Elements()
    parser.feed(response.content.decode())
    return [
        attrs for name, attrs in parser.found if attribute in attrs and (tag is None or name == tag)
    ]


def the_execution(response):
    [root] = [attrs for attrs in elements(response, "id") if attrs["id"] == "execution"]
    return root


def stream_state(response):
    [state] = elements(response, "data-stream-state")
    return state["data-stream-state"]


def node_states(response):
    return {
        attrs["data-node-id"]: attrs["data-status"] for attrs in elements(response, "data-node-id")
    }


def listed(response):
    return [attrs["data-execution-id"] for attrs in elements(response, "data-execution-id", "tr")]


def run_with_a_running_node(owner, **fields):
    """A running execution of two nodes: ``fetch`` completed (50 %), ``call`` running."""
    recorder = ExecutionRecorder.create(
        owner=owner, workflow_id="wf_stream", total_nodes=2, **fields
    )
    recorder.start()
    with recorder.node("fetch", "http") as node:
        node.outputs = {"status": 200}
    recorder.start_node("call", "ai_chat")
    return recorder


def pending(owner, workflow_id="wf_stream", mode="live"):
    return ExecutionRecorder.create(owner=owner, workflow_id=workflow_id, mode=mode).execution_id


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(
        "carol", password="carol-password-1", is_staff=True
    )


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


# Logging in ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["list", "detail"])
def test_the_pages_send_a_visitor_who_is_not_logged_in_to_the_login_url(client, user, page):
    url = LIST_URL if page == "list" else detail_url(pending(user))

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN_URL}?next={url}"


def test_the_login_page_is_a_labelled_django_login_form_that_leads_to_the_executions(client, user):
    page = client.get(LOGIN_URL)
    assert page.status_code == 200
    assertContains(page, '<label for="id_username">')
    assertContains(page, '<label for="id_password">')
    assertContains(page, 'name="csrfmiddlewaretoken"')

    response = client.post(LOGIN_URL, {"username": "alice", "password": "alice-password-1"})

    assert response.status_code == 302
    assert response["Location"] == LIST_URL
    assert client.get(LIST_URL).status_code == 200


def test_logging_out_takes_a_post_and_leads_back_to_the_login_page(alice):
    assert alice.get("/accounts/logout/").status_code == 405

    response = alice.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == LOGIN_URL
    assert alice.get(LIST_URL).status_code == 302


def test_the_admins_login_serves_the_pages_too(client, staff_user):
    response = client.post(
        reverse("admin:login"), {"username": "carol", "password": "carol-password-1"}
    )
    assert response.status_code == 302

    assert client.get(LIST_URL).status_code == 200


def test_the_site_root_leads_to_the_executions(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == LIST_URL


# Who sees what ---------------------------------------------------------------------------


def test_a_user_lists_its_own_executions_in_both_modes_and_no_one_elses(alice, user, other_user):
    live, test = pending(user), pending(user, mode="test")
    pending(other_user)

    response = alice.get(LIST_URL)

    assert response.status_code == 200
    assert set(listed(response)) == {live, test}
    assertNotContains(response, '<th scope="col">Owner</th>', html=True)


def test_another_users_execution_is_a_404_page_not_json(alice, other_user):
    theirs = pending(other_user)

    response = alice.get(detail_url(theirs))

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assertNotContains(response, theirs, status_code=404)


def test_a_missing_execution_is_a_404_page(alice):
    response = alice.get(detail_url("exec_doesNotExist0000000000"))

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_staff_see_every_execution_and_whose_it_is(client, staff_user, user, other_user):
    mine, theirs = pending(user), pending(other_user, mode="test")
    client.force_login(staff_user)

    response = client.get(LIST_URL)

    assert set(listed(response)) == {mine, theirs}
    assertContains(response, '<th scope="col">Owner</th>', html=True)
    assertContains(response, '<td data-label="Owner">bob</td>', html=True)
    page = client.get(detail_url(theirs))
    assert page.status_code == 200
    assert the_execution(page)["data-execution-id"] == theirs


# The list ---------------------------------------------------------------------------------


def test_the_list_is_newest_first_and_each_row_links_to_its_page(alice, user):
    older, newer = pending(user), pending(user)

    response = alice.get(LIST_URL)

    assert listed(response) == [newer, older]
    assertContains(response, f'<a href="{detail_url(newer)}">{newer}</a>', html=True)
    assertContains(response, '<span class="status">Pending</span>', html=True, count=2)


def test_the_list_filters_by_status_and_by_workflow_with_a_labelled_form(alice, user):
    report = pending(user, workflow_id="wf_report")
    done = completed_run(user)
    pending(user)

    assert listed(alice.get(LIST_URL, {"status": "pending", "workflow_id": "wf_report"})) == [
        report
    ]
    assert listed(alice.get(LIST_URL, {"status": "completed"})) == [done]
    response = alice.get(LIST_URL, {"workflow_id": "wf_stream"})
    assert len(listed(response)) == 2
    assertContains(response, '<label for="id_status">Status</label>', html=True)
    assertContains(response, '<label for="id_workflow_id">Workflow</label>', html=True)
    assertContains(response, '<option value="wf_report">wf_report</option>', html=True)


def test_a_filter_value_that_means_nothing_is_reported_and_left_out(alice, user):
    execution_id = pending(user)

    response = alice.get(LIST_URL, {"status": "sleeping"})

    assert response.status_code == 200
    assert listed(response) == [execution_id]
    assertContains(response, 'class="errorlist')


def test_the_list_shows_25_a_page_and_its_page_links_keep_the_filters(alice, user):
    ids = [pending(user) for _ in range(PAGE_SIZE + 3)]
    newest_first = ids[::-1]

    first = alice.get(LIST_URL, {"status": "pending"})
    second = alice.get(LIST_URL, {"status": "pending", "page": 2})

    assert listed(first) == newest_first[:PAGE_SIZE]
    assert listed(second) == newest_first[PAGE_SIZE:]
    assertContains(first, 'href="?status=pending&amp;page=2"')
    assertContains(first, "Page 1 of 2")
    assertContains(second, 'href="?status=pending&amp;page=1"')
    assert listed(alice.get(LIST_URL, {"page": 99})) == newest_first[PAGE_SIZE:]


def test_partial_rows_answers_only_the_rows_that_the_filters_select(alice, user):
    running = ExecutionRecorder.create(owner=user, workflow_id="wf_stream")
    running.start()
    completed_run(user)

    response = alice.get(LIST_URL, {"status": "running", "partial": "rows"})

    assert response.status_code == 200
    body = response.content.decode().strip()
    assert body.startswith("<tr ")
    assert "<table" not in body
    assert "<html" not in body
    assert listed(response) == [running.execution_id]
    assert elements(response, "data-status", "tr")[0]["data-status"] == "running"


def test_the_list_tells_its_script_where_to_fetch_its_rows_again(alice, user):
    pending(user)

    response = alice.get(LIST_URL, {"status": "pending"})

    [rows] = elements(response, "data-live-rows", "tbody")
    assert rows["data-rows-url"] == "?status=pending&partial=rows"
    assert int(rows["data-refresh-ms"]) > 0
    [script] = elements(response, "src", "script")
    assert script["src"].endswith("executions/execution_list.js")
    assert "defer" in script


# The live page ----------------------------------------------------------------------------


def test_a_finished_execution_renders_its_whole_state_and_opens_no_stream(alice, user):
    execution_id = completed_run(user)
    execution = Execution.objects.get(pk=execution_id)

    response = alice.get(detail_url(execution_id))

    assert response.status_code == 200
    root = the_execution(response)
    assert root["data-execution-id"] == execution_id
    assert root["data-status"] == "completed"
    assert root["data-last-seq"] == str(execution.last_seq)
    assert "data-events-url" not in root
    assert stream_state(response) == "finished"
    assert node_states(response) == {"fetch": "completed", "call": "failed"}
    assertContains(response, '<progress id="execution-progress" max="100" value="100">')
    assertContains(response, "model timed out")
    assertContains(response, '<span class="status status-large" data-role="execution-status">')
    assertContains(response, "Completed in ")
    assertContains(response, "{\n  &quot;ok&quot;: true\n}")
    assertNotContains(response, 'data-role="cancel"')


def test_a_running_execution_follows_the_stream_from_what_the_page_shows(alice, user):
    recorder = run_with_a_running_node(user)
    execution = recorder.execution

    response = alice.get(detail_url(execution.pk))

    root = the_execution(response)
    assert root["data-status"] == "running"
    assert root["data-events-url"] == (
        f"{events_url(execution.pk)}?last_event_id={execution.last_seq}"
    )
    assert root["data-last-seq"] == str(execution.last_seq)
    assert root["data-started-at"].endswith("Z")
    assert stream_state(response) == "reconnecting"
    assert node_states(response) == {"fetch": "completed", "call": "running"}
    call = next(
        node for node in elements(response, "data-node-id") if node["data-node-id"] == "call"
    )
    assert call["data-started-at"].endswith("Z")
    assertContains(
        response,
        '<progress id="execution-progress" max="100" value="50">50% (1 of 2 nodes)</progress>',
        html=True,
    )
    assertContains(response, '<ol class="timeline" data-role="timeline" aria-live="polite">')
    assertContains(response, 'aria-live="polite">Connecting…</span>')
    [script] = elements(response, "src", "script")
    assert script["src"].endswith("executions/execution_live.js")


def test_the_live_page_shows_times_owner_mode_and_workflow_in_its_header(alice, user):
    execution = completed_run(user)

    response = alice.get(detail_url(execution))

    run = Execution.objects.get(pk=execution)
    assertContains(response, "<dt>Owner</dt><dd>alice</dd>", html=True)
    assertContains(response, "<dt>Mode</dt><dd>Live</dd>", html=True)
    assertContains(response, "<dt>Workflow</dt><dd><code>wf_stream</code></dd>", html=True)
    started = run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assertContains(response, f">{started}</time>")
    duration = format_duration(run.duration_ms)
    assertContains(response, f'<dd data-role="execution-duration">{duration}</dd>', html=True)


def test_a_pending_execution_has_an_empty_timeline_and_no_progress(alice, user):
    execution_id = pending(user)

    response = alice.get(detail_url(execution_id))

    assert the_execution(response)["data-status"] == "pending"
    assert node_states(response) == {}
    assertContains(response, "No node has started yet.")
    assertContains(response, '<progress id="execution-progress" max="100" value="0">')


def test_a_running_execution_without_progress_yet_shows_an_indeterminate_bar(alice, user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream")
    recorder.start()

    response = alice.get(detail_url(recorder.execution_id))

    assertContains(response, '<progress id="execution-progress" max="100">Not known yet</progress>')


def test_a_run_of_a_known_number_of_nodes_starts_at_none_of_them(alice, user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream", total_nodes=3)
    recorder.start()

    response = alice.get(detail_url(recorder.execution_id))

    assertContains(
        response,
        '<progress id="execution-progress" max="100" value="0">0% (0 of 3 nodes)</progress>',
        html=True,
    )


def test_a_failed_execution_shows_its_error_and_the_node_that_failed(alice, user):
    recorder = run_with_a_running_node(user)
    recorder.fail_node("call", TimeoutError("the model timed out"))
    recorder.fail("the model timed out", node_id="call")

    response = alice.get(detail_url(recorder.execution_id))

    assert the_execution(response)["data-status"] == "failed"
    assert node_states(response) == {"fetch": "completed", "call": "failed"}
    assertContains(response, "Failed after ")
    assertContains(
        response,
        '<span data-role="execution-error-text">the model timed out</span>',
        html=True,
    )


def test_a_cancelled_execution_shows_its_running_node_cancelled(alice, user):
    recorder = run_with_a_running_node(user)
    recorder.cancel()

    response = alice.get(detail_url(recorder.execution_id))

    assert the_execution(response)["data-status"] == "cancelled"
    assert node_states(response) == {"fetch": "completed", "call": "cancelled"}
    assert stream_state(response) == "finished"


def test_outputs_and_errors_holding_markup_are_rendered_as_text(alice, user):
    recorder = ExecutionRecorder.create(owner=user, workflow_id="wf_stream")
    recorder.start()
    with recorder.node("render", "transform") as node:
        node.outputs = {"html": MARKUP}
    recorder.start_node("inject", "http")
    recorder.fail_node("inject", MARKUP)
    recorder.complete({"page": MARKUP})

    response = alice.get(detail_url(recorder.execution_id))

    page = response.content.decode()
    assert "<script>alert" not in page
    assert page.count(ESCAPED_MARKUP) == 3  # a node's outputs and error, the final outputs
    assertContains(response, "&quot;html&quot;: &quot;&lt;script&gt;")


def test_the_node_template_the_script_clones_is_empty_and_outside_the_document(alice, user):
    response = alice.get(detail_url(completed_run(user)))

    page = response.content.decode()
    [template] = re.findall(r'<template id="node-template">(.*?)</template>', page, re.S)
    assert 'data-node-id=""' in template
    assert 'data-role="outputs-json"' in template


@pytest.mark.parametrize("page", ["list", "detail"])
def test_the_pages_have_no_inline_script_or_style_for_a_strict_csp(alice, user, page):
    execution_id = run_with_a_running_node(user).execution_id

    response = alice.get(LIST_URL if page == "list" else detail_url(execution_id))

    html = response.content.decode()
    assert re.search(r"<script(?![^>]*\ssrc=)", html) is None
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None


def test_the_pages_scripts_and_stylesheets_are_static_files_of_the_app():
    for name in ("execution_live.js", "execution_list.js", "pages.css", "page_base.css"):
        assert finders.find(f"executions/{name}") is not None, name


def test_the_pages_extend_the_base_template_the_host_names(alice, user, settings):
    response = alice.get(LIST_URL)
    assertTemplateUsed(response, "base.html")
    assertContains(response, '<a href="/executions/" aria-current="page">Executions</a>', html=True)
    assertContains(response, f'<a href="{reverse("executions:docs")}">API docs</a>', html=True)
    assertContains(response, "Log out")
    assertNotContains(response, '<a href="/admin/">Admin</a>', html=True)

    settings.EXECUTIONS = {"KEEPALIVE_INTERVAL": 4.0}
    response = alice.get(detail_url(pending(user)))
    assertTemplateUsed(response, "executions/page_base.html")
    assertTemplateNotUsed(response, "base.html")
    assertContains(response, '<main class="site-main">')


def test_the_demo_sites_navigation_offers_the_admin_to_staff(client, staff_user):
    client.force_login(staff_user)

    response = client.get(LIST_URL)

    assertContains(response, '<a href="/admin/">Admin</a>', html=True)


# Cancelling -------------------------------------------------------------------------------


def test_the_owner_cancels_a_running_execution_with_the_pages_form_and_csrf(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    recorder = run_with_a_running_node(user)
    page = client.get(detail_url(recorder.execution_id))
    [form] = elements(page, "data-role", "form")
    assert form["action"] == cancel_url(recorder.execution_id)
    assert form["method"] == "post"
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]

    refused = client.post(cancel_url(recorder.execution_id))
    assert refused.status_code == 403
    assert recorder.execution.status == Status.RUNNING

    response = client.post(cancel_url(recorder.execution_id), {"csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert response["Location"] == detail_url(recorder.execution_id)
    assert recorder.execution.status == Status.CANCELLED
    after = client.get(response["Location"])
    assert the_execution(after)["data-status"] == "cancelled"
    assertContains(after, "is cancelled.")
    assertNotContains(after, 'data-role="cancel"')


def test_staff_may_cancel_anyones_execution(client, staff_user, other_user):
    recorder = run_with_a_running_node(other_user)
    client.force_login(staff_user)

    response = client.post(cancel_url(recorder.execution_id))

    assert response.status_code == 302
    assert recorder.execution.status == Status.CANCELLED


def test_another_user_cannot_cancel_an_execution_it_may_not_see(alice, other_user):
    recorder = run_with_a_running_node(other_user)

    response = alice.post(cancel_url(recorder.execution_id))

    assert response.status_code == 404
    assert recorder.execution.status == Status.RUNNING


def test_the_cancel_url_answers_get_with_405(alice, user):
    response = alice.get(cancel_url(pending(user)))

    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_cancelling_a_finished_execution_leads_back_to_its_page_with_a_message(alice, user):
    execution_id = completed_run(user)

    response = alice.post(cancel_url(execution_id), follow=True)

    assert response.redirect_chain == [(detail_url(execution_id), 302)]
    assert the_execution(response)["data-status"] == "completed"
    assertContains(response, "is already completed: there is nothing to cancel.")


def test_a_cancel_without_a_login_cancels_nothing_and_asks_to_log_in(client, user):
    recorder = run_with_a_running_node(user)

    response = client.post(cancel_url(recorder.execution_id))

    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN_URL}?next={detail_url(recorder.execution_id)}"
    assert recorder.execution.status == Status.RUNNING


# The admin --------------------------------------------------------------------------------


def test_the_admin_lists_executions_with_a_link_to_each_live_page(admin_client, user):
    execution_id = completed_run(user)

    response = admin_client.get(reverse("admin:executions_execution_changelist"))

    assert response.status_code == 200
    assert [execution.pk for execution in response.context["cl"].result_list] == [execution_id]
    assertContains(response, f'<a href="{detail_url(execution_id)}">Watch live</a>', html=True)
    for parameter in ("status__exact", "mode__exact", "workflow_id"):
        assertContains(response, f'href="?{parameter}=')


def test_the_admin_searches_executions_by_id_workflow_and_owner(admin_client, user, other_user):
    alices = completed_run(user)
    bobs = pending(other_user, workflow_id="wf_report")
    changelist = reverse("admin:executions_execution_changelist")

    def found(query):
        response = admin_client.get(changelist, {"q": query})
        return {execution.pk for execution in response.context["cl"].result_list}

    assert found(alices) == {alices}
    assert found("wf_report") == {bobs}
    assert found("bob") == {bobs}


def execution_admin_url(view, execution_id):
    """The admin's URL of an execution's ``view``, its id quoted as the admin quotes it: an
    id such as ``exec_2F...`` reaches the admin as ``exec/...`` otherwise."""
    return reverse(f"admin:executions_execution_{view}", args=[quote(execution_id)])


def test_the_admin_shows_an_execution_with_its_node_runs_and_event_log_read_only(
    admin_client, user
):
    execution_id = completed_run(user)

    response = admin_client.get(execution_admin_url("change", execution_id))

    assert response.status_code == 200
    page = response.content.decode()
    assert "Node runs" in page
    assert "Event log" in page
    assert "model timed out" in page
    seqs = re.findall(r'<td class="field-seq">\s*<p>(\d+)</p>', page)
    assert seqs == [str(seq) for seq in range(1, 9)]
    assertContains(response, f'<a href="{detail_url(execution_id)}">Watch live</a>', html=True)
    assertNotContains(response, 'name="_save"')
    assertNotContains(response, "deletelink")


def test_the_admin_adds_changes_and_deletes_no_execution(admin_client, user):
    execution_id = completed_run(user)
    changelist = admin_client.get(reverse("admin:executions_execution_changelist"))

    assert admin_client.get(reverse("admin:executions_execution_add")).status_code == 403
    delete = execution_admin_url("delete", execution_id)
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    change = execution_admin_url("change", execution_id)
    assert admin_client.post(change, {"status": "failed"}).status_code == 403
    assert "delete_selected" not in changelist.context["cl"].model_admin.get_actions(
        changelist.wsgi_request
    )
    assert Execution.objects.get(pk=execution_id).status == Status.COMPLETED
    assert Execution.objects.get(pk=execution_id).events.count() > 0


def test_the_admin_links_to_no_page_where_the_host_has_not_mounted_them(settings, user):
    execution = Execution.objects.get(pk=completed_run(user))
    settings.ROOT_URLCONF = "tests.alternate_urls"
    model_admin = ExecutionAdmin(Execution, admin.site)

    assert model_admin.live_page(execution) == "-"
    assert model_admin.view_on_site(execution) is None


# The demo command -------------------------------------------------------------------------


def test_the_demo_prints_the_live_page_and_its_login_before_the_curl_lines():
    out = StringIO()
    command = DemoCommand(stdout=out)

    command.print_instructions("http://127.0.0.1:8000", "fm_live_raw", None, "exec_demo123")

    text = out.getvalue()
    live_page = "http://127.0.0.1:8000/executions/exec_demo123/"
    assert live_page in text
    assert "user 'demo', password 'demo'" in text
    assert text.index(live_page) < text.index("curl")
