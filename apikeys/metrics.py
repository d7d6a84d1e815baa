"""The API keys' Prometheus metrics: requests refused for their credentials or their
rate limits (served with the executions app's, ``executions.metrics``)."""

from prometheus_client import Counter

AUTHENTICATION_FAILURES = Counter(
    "api_authentication_failures",
    "Requests refused for their credentials, by error code.",
    ["code"],
)
RATE_LIMIT_REFUSALS = Counter(
    "api_rate_limit_refusals",
    "Requests refused over a rate limit, by window (minute, day, open_streams).",
    ["window"],
)


def count_refusal(error):
    """Count an ``APIError`` answered to a client if it is a refusal these metrics count."""
    if error.status_code == 401:
        AUTHENTICATION_FAILURES.labels(error.code).inc()
    elif error.status_code == 429:
        window = (error.details or {}).get("window", "unknown")
        RATE_LIMIT_REFUSALS.labels(window).inc()
