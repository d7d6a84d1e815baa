"""Liveness, readiness and metrics, for a host to include where its monitoring looks:

path("", include("executions.monitoring_urls")),   # /healthz, /readyz, /metrics
"""

from django.urls import path

from . import health, metrics

app_name = "execution_monitoring"

urlpatterns = [
    path("healthz", health.live, name="live"),
    path("readyz", health.ready, name="ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
