"""The app's settings: one ``APIKEYS`` dict in the host's settings, merged over defaults."""

from functools import cache

from django.conf import settings

CONFIG_DEFAULTS = {
    # Extra scopes the host site registers: {"reports:read": "Read reports"}.
    "SCOPES": {},
    # Extra bundles: {"reporting": ["reports:read", "executions:read"]}.
    "BUNDLES": {},
    # Whether fm_test_ keys authenticate at all.
    "ACCEPT_TEST_KEYS": True,
    # last_used_at / last_used_ip are rewritten at most this often per key (seconds).
    "LAST_USED_INTERVAL": 60,
    "DEFAULT_RATE_LIMIT_PER_MINUTE": 60,
    "DEFAULT_RATE_LIMIT_PER_DAY": 10_000,
    # Redis URL for the rate-limit counters; None counts in Django's default cache.
    "RATE_LIMIT_REDIS_URL": None,
    # True lets requests through while the counter store is down; False answers 503.
    "RATE_LIMIT_FAIL_OPEN": True,
    "RATE_LIMIT_KEY_PREFIX": "apikeys:rl",
    # Seconds to wait on the counter store before treating it as down.
    "RATE_LIMIT_TIMEOUT": 0.5,
}


@cache
def get_config():
    """Return the effective ``APIKEYS`` settings."""
    config = CONFIG_DEFAULTS.copy()
    config.update(getattr(settings, "APIKEYS", {}))
    return config


def clear_config_cache(*, setting, **kwargs):
    if setting == "APIKEYS":
        get_config.cache_clear()
        from .scopes import clear_registry_cache

        clear_registry_cache()
