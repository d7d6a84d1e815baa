"""Structured logs: one JSON line per record, with the request id on every line of a
request and of an event stream's whole life, and the grant's display name (a key's
prefix, never a key or a token).

    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "apikeys.logs.RequestContextFilter"}},
        "formatters": {"json": {"()": "apikeys.logs.JSONFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["context"],
                                 "formatter": "json"}},
        "root": {"handlers": ["console"], "level": "INFO"},
    }
"""

import contextvars
import json
import logging
from datetime import UTC, datetime

# Set by APIMiddleware for each request (and so for its stream, which runs in the
# request's task), and by the stream for its grant.
request_id = contextvars.ContextVar("request_id", default=None)
grant = contextvars.ContextVar("grant", default=None)

# The attributes every LogRecord has; anything else on a record was passed as extra=.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RequestContextFilter(logging.Filter):
    """Give each record the ``request_id`` and ``grant`` of the code that logs it."""

    def filter(self, record):
        record.request_id = request_id.get()
        record.grant = grant.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, grant, the
    record's extra fields, and the exception if there is one."""

    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
