"""The streams' and the recorder's Prometheus metrics (prometheus-client), and the view
that serves them with the API keys' own (``apikeys.metrics``).

Each process counts its own. With several processes behind one address, set the
environment variable ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode)
to a directory they share, emptied at deploy: the view then adds up every process's.
"""

import os

from django.http import HttpResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from .conf import get_config

OPEN_STREAMS = Gauge(
    "executions_open_streams", "Event streams open now.", multiprocess_mode="livesum"
)
STREAM_OPENS = Counter("executions_stream_opens", "Event streams opened, by grant.", ["grant"])
STREAM_CLOSES = Counter(
    "executions_stream_closes",
    "Event streams closed, by reason: terminal (the execution ended), client_left, "
    "too_slow, grant_revoked, shutdown.",
    ["reason"],
)
EVENTS_RECORDED = Counter(
    "executions_events_recorded", "Events recorded (committed) by this process, by type.", ["type"]
)
EVENTS_DELIVERED = Counter(
    "executions_events_delivered",
    "Events handed to streams: live (from the channel layer) or log (replays, gap fills).",
    ["source"],
)
REPLAY_SIZE = Histogram(
    "executions_replay_events",
    "Events a stream read from the log when it opened.",
    buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000),
)
DELIVERY_LAG = Histogram(
    "executions_delivery_lag_seconds",
    "From an event's commit to its hand-out to the streams of this process.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAYER_ERRORS = Counter(
    "executions_channel_layer_errors",
    "Channel layer calls that failed, by operation (send, join, leave, receive).",
    ["operation"],
)
LIVE, FROM_LOG = EVENTS_DELIVERED.labels("live"), EVENTS_DELIVERED.labels("log")
LOG_READS = Counter(
    "executions_log_reads",
    "Logged events read for the streams, by where from: cache (executions.logcache) or database.",
    ["source"],
)
READ_FROM_CACHE, READ_FROM_DATABASE = LOG_READS.labels("cache"), LOG_READS.labels("database")


def registry():
    """The registry to read: every process's, in multiprocess mode, else this one's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return PROCESS_REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    return collected


def may_read_metrics(request):
    """Whether the request may read the metrics: a staff session, or the bearer secret
    ``EXECUTIONS["METRICS_TOKEN"]`` when one is set."""
    token = get_config()["METRICS_TOKEN"]
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and constant_time_compare(credential.strip(), token):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def metrics_view(request):
    """The metrics in Prometheus' text format, for those ``may_read_metrics()`` allows
    (404 to others: the endpoint does not say it exists)."""
    if not may_read_metrics(request):
        return HttpResponse(status=404)
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
