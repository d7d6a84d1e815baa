"""Settings of the server and producer processes that the live tests start.

``tests.settings``, adjusted from the environment the tests pass to the subprocess:
``CHANNEL_LAYER_BACKEND=memory`` (the in-memory layer instead of channels-redis) or
``=core`` (channels-redis' core layer instead of its pub/sub one),
``EXECUTIONS_KEEPALIVE``, ``EXECUTIONS_POLL_INTERVAL``, ``EXECUTIONS_HEARTBEAT_INTERVAL``
and ``EXECUTIONS_HEARTBEAT_TIMEOUT`` (seconds), ``EXECUTIONS_RETRY_MS``,
``EXECUTIONS_LOG_CACHE_BYTES``, ``APIKEYS_RATE_LIMIT_KEY_PREFIX`` and ``GZIP_MIDDLEWARE=1``.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import APIKEYS, CHANNEL_LAYERS, EXECUTIONS, MIDDLEWARE

if os.environ.get("CHANNEL_LAYER_BACKEND") == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
elif os.environ.get("CHANNEL_LAYER_BACKEND") == "core":
    CHANNEL_LAYERS = {
        "default": {**CHANNEL_LAYERS["default"], "BACKEND": "channels_redis.core.RedisChannelLayer"}
    }

EXECUTIONS = {**EXECUTIONS}
if os.environ.get("EXECUTIONS_KEEPALIVE"):
    EXECUTIONS["KEEPALIVE_INTERVAL"] = float(os.environ["EXECUTIONS_KEEPALIVE"])
if os.environ.get("EXECUTIONS_POLL_INTERVAL"):
    EXECUTIONS["POLL_INTERVAL"] = float(os.environ["EXECUTIONS_POLL_INTERVAL"])
if os.environ.get("EXECUTIONS_HEARTBEAT_INTERVAL"):
    EXECUTIONS["HEARTBEAT_INTERVAL"] = float(os.environ["EXECUTIONS_HEARTBEAT_INTERVAL"])
if os.environ.get("EXECUTIONS_HEARTBEAT_TIMEOUT"):
    EXECUTIONS["HEARTBEAT_TIMEOUT"] = float(os.environ["EXECUTIONS_HEARTBEAT_TIMEOUT"])
if os.environ.get("EXECUTIONS_RETRY_MS"):
    EXECUTIONS["RETRY_MS"] = int(os.environ["EXECUTIONS_RETRY_MS"])
if os.environ.get("EXECUTIONS_LOG_CACHE_BYTES"):
    EXECUTIONS["LOG_CACHE_BYTES"] = int(os.environ["EXECUTIONS_LOG_CACHE_BYTES"])

if os.environ.get("APIKEYS_RATE_LIMIT_KEY_PREFIX"):
    APIKEYS = {**APIKEYS, "RATE_LIMIT_KEY_PREFIX": os.environ["APIKEYS_RATE_LIMIT_KEY_PREFIX"]}

if os.environ.get("GZIP_MIDDLEWARE") == "1":
    MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *MIDDLEWARE]
