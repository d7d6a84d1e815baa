from django.urls import path, re_path

from . import schema, stream, views

app_name = "executions"

urlpatterns = [
    path("workflows", views.WorkflowList.as_view(), name="workflow-list"),
    path("workflows/<str:workflow_id>", views.WorkflowDetail.as_view(), name="workflow-detail"),
    path(
        "workflows/<str:workflow_id>/execute",
        views.WorkflowExecute.as_view(),
        name="workflow-execute",
    ),
    path("executions", views.ExecutionList.as_view(), name="execution-list"),
    path("executions/<str:execution_id>", views.ExecutionDetail.as_view(), name="execution-detail"),
    path(
        "executions/<str:execution_id>/cancel",
        views.ExecutionCancel.as_view(),
        name="execution-cancel",
    ),
    path(
        "executions/<str:execution_id>/stream-token",
        views.ExecutionStreamToken.as_view(),
        name="execution-stream-token",
    ),
    path("executions/<str:execution_id>/events", stream.execution_events, name="execution-events"),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
    path("docs/", schema.DocsView.as_view(), name="docs"),
    re_path(r"^.*$", views.not_found, name="not-found"),
]
