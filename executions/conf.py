"""The app's settings: one ``EXECUTIONS`` dict in the host's settings, merged over defaults."""

from apikeys.appsettings import AppSettings

CONFIG_DEFAULTS = {
    # Seconds of silence after which a stream sends ": keepalive"; the grants of open
    # streams are re-checked every quarter interval, so a revoked key ends its streams
    # within one interval.
    "KEEPALIVE_INTERVAL": 15.0,
    # The SSE "retry:" a client waits before reconnecting, in milliseconds.
    "RETRY_MS": 3000,
    # Channel layer alias and group-name prefix for the per-execution groups.
    "CHANNEL_LAYER": "default",
    "GROUP_PREFIX": "executions.",
    # How often a process checks the log for events its channel layer did not bring
    # (seconds). None: 0.25 s on the in-memory layer, which cannot hear other processes,
    # and the keepalive interval on any other layer.
    "POLL_INTERVAL": None,
    # Events read from the log per query when replaying or filling a gap.
    "REPLAY_BATCH_SIZE": 500,
    # Bytes of recently read events each process keeps (executions.logcache), so that
    # streams replaying the same history read it from the database once; 0 keeps none.
    "LOG_CACHE_BYTES": 16 * 1024 * 1024,
    # The shortest time between two hand-outs of an execution's events to the streams of
    # a process (seconds): events that come sooner go out together, in one write per
    # stream. 0 hands out every event at once.
    "BATCH_INTERVAL": 0.025,
    # The kinds of grant that open an event stream, tried in order (executions.grants).
    "STREAM_GRANTS": [
        "executions.grants.APIKeyGrant",
        "executions.grants.StreamTokenGrant",
        "executions.grants.SessionGrant",
    ],
    # Seconds a stream token (POST .../stream-token) may be used to open a stream.
    "STREAM_TOKEN_TTL": 300,
    # Seconds between the heartbeats of a process running a workflow (run_execution), and
    # how old its last one may be before the execution is failed as abandoned (its worker
    # was killed or lost): see executions.workflows.fail_abandoned().
    "HEARTBEAT_INTERVAL": 5.0,
    "HEARTBEAT_TIMEOUT": 30.0,
    # Streams one API key (its stream tokens included), or one user's sessions, may hold
    # open at once, across all server processes (executions.slots); None: no limit.
    "MAX_STREAMS_PER_KEY": 100,
    # The largest event a producer may record, in bytes of its data line: a larger one is
    # refused (ValueError) before anything is recorded.
    "MAX_EVENT_BYTES": 1_048_576,
    # Events, and bytes of their frames, a slow stream may have queued before it is
    # closed (the client reconnects with Last-Event-ID and resumes from the log).
    "STREAM_QUEUE_SIZE": 1000,
    "STREAM_QUEUE_BYTES": 1_048_576,
    # Whether executions.asgi.get_asgi_application() tunes the process's garbage
    # collector for thousands of open streams (see executions.asgi.tune_gc).
    "TUNE_GC": True,
    # Threads of each kind of the streams' database work, apart from each other and from
    # the rest of the site's: opening streams (the grant, the execution, the first replay
    # batch), reading the log (replays, gap filling), re-checking open streams' grants.
    # A slow query of one kind never holds up another: a revoked key ends its streams on
    # time while replays wait on a locked table. Each thread may hold a connection.
    "DATABASE_THREADS": {"open": 4, "log": 4, "check": 1},
    # Whether SIGTERM ends a server process's open streams at once (clients reconnect to
    # another process) before the server's own graceful shutdown, which would otherwise
    # wait for them to end (executions.fanout.end_streams_on_sigterm).
    "END_STREAMS_ON_SIGTERM": True,
    # How long finished executions (completed, failed, cancelled) and their event logs are
    # kept after they end: a datetime.timedelta, or None to keep them until deleted.
    # pruneexecutions deletes older ones (executions.retention).
    "RETENTION": None,
    # Seconds the readiness check (executions.health) waits on PostgreSQL and on Redis.
    "HEALTH_TIMEOUT": 2.0,
    # A bearer secret that reads the metrics (executions.metrics.metrics_view) besides a
    # staff session; None: staff sessions only.
    "METRICS_TOKEN": None,
    # Whether executions.asgi.StreamingASGIHandler serves every async view, not only the
    # event stream, outside Django's per-request thread context (see its docstring).
    "THREAD_FREE_ASYNC_VIEWS": False,
    # The template the live pages (executions.pages) extend: a host sets its own base, which
    # provides the blocks that executions/page_base.html, the default, documents.
    "PAGE_BASE_TEMPLATE": "executions/page_base.html",
}


app_settings = AppSettings("EXECUTIONS", CONFIG_DEFAULTS)
get_config = app_settings.get
