from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from . import stream, views

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
    path("executions/<str:execution_id>/events", stream.execution_events, name="execution-events"),
    path(
        "schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny]),
        name="schema",
    ),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(
            url_name="executions:schema", authentication_classes=[], permission_classes=[AllowAny]
        ),
        name="docs",
    ),
    re_path(r"^.*$", views.not_found, name="not-found"),
]
