"""The app's settings: one ``APIKEYS`` dict in the host's settings, merged over defaults."""

from .appsettings import AppSettings

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


app_settings = AppSettings("APIKEYS", CONFIG_DEFAULTS)
get_config = app_settings.get
