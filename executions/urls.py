from django.urls import path

from . import stream

app_name = "executions"

urlpatterns = [
    path("executions/<str:execution_id>/events", stream.execution_events, name="execution-events"),
]
