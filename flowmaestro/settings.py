"""Settings of the demo and test host site.

With nothing configured it runs on SQLite and Channels' in-memory layer. ``DATABASE_URL``
switches the database (PostgreSQL in production) and ``REDIS_URL`` switches the channel
layer to channels-redis and the API keys' rate-limit counters to Redis.
"""

import importlib.util
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

DEVELOPMENT_SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY = os.environ.get("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
DEBUG = os.environ.get("DEBUG", "1").lower() in {"1", "true", "yes", "on"}
ALLOWED_HOSTS = [
    h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_tasks_db",
    "apikeys",
    "executions",
    "flowmaestro.apps.FlowMaestroSiteConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apikeys.middleware.APIMiddleware",
]

# Cross-origin access to the API, off unless origins are listed: a page on another
# origin streams with a stream token (EventSource sends no header, and no cookie across
# origins here) or calls the REST API with a key its own backend hands it.
CORS_ALLOWED_ORIGINS = [o for o in os.environ.get("CORS_ALLOWED_ORIGINS", "").split(",") if o]
if CORS_ALLOWED_ORIGINS:
    from corsheaders.defaults import default_headers

    INSTALLED_APPS.append("corsheaders")
    MIDDLEWARE.insert(0, "corsheaders.middleware.CorsMiddleware")
    CORS_URLS_REGEX = r"^/api/v1/"
    CORS_ALLOW_HEADERS = (*default_headers, "x-api-key", "last-event-id")
    CORS_EXPOSE_HEADERS = [
        "X-Request-ID",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
    ]

ROOT_URLCONF = "flowmaestro.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "flowmaestro.asgi.application"

DATABASES = {"default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool of connections per process (Django's psycopg pool): a request or a stream's
    # database read borrows one for as long as it takes, instead of opening a connection
    # (a few milliseconds) each time. Threads that read at once: the event loop's default
    # executor (cores + 4), asgiref's sync thread, the publisher.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 2,
            "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "10")),
            "timeout": 10,
        }
    }
    # The pool checks a connection (an empty query) before lending it: without this it
    # lends one the database has dropped (a restart, a failover, an idle timeout) once
    # more, and that request, a stream's opening, answers 500.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so two writers appending to one
    # execution's event log queue up instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Redis pushes each event to every subscribed process at once; the core layer's
            # receive() costs four round trips per message (docs/performance.md).
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL}],
                "prefix": os.environ.get("CHANNEL_PREFIX", "asgi"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Workflows run in a worker (`manage.py db_worker`), queued through Django's tasks
# framework: built into Django 6, the django-tasks backport on Django 5.2.
if importlib.util.find_spec("django.tasks") is None:
    INSTALLED_APPS.insert(INSTALLED_APPS.index("django_tasks_db"), "django_tasks")
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

APIKEYS = {"RATE_LIMIT_REDIS_URL": REDIS_URL}
# Test keys are accepted unless refused (the app's default). Set only from the environment,
# so that a production site that says nothing is told to decide (check apikeys.W001).
if "ACCEPT_TEST_KEYS" in os.environ:
    APIKEYS["ACCEPT_TEST_KEYS"] = os.environ["ACCEPT_TEST_KEYS"] == "1"
# FlowMaestro's official Python SDK reads streams with httpx's default 5 s read timeout,
# so this site, which serves SDK clients, sends keepalives more often than the default 15 s.
EXECUTIONS = {
    "KEEPALIVE_INTERVAL": 4.0,
    # The live pages (/executions/) sit in this site's own layout and navigation.
    "PAGE_BASE_TEMPLATE": "base.html",
    # /metrics answers a staff session, or this bearer secret (a Prometheus scraper's).
    "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or None,
}

# The live pages and the admin share the session: log in at either.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/executions/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Headers on every response (SecurityMiddleware, XFrameOptionsMiddleware); Django's
# defaults, spelled out because the site relies on them. The live pages add their own
# Content-Security-Policy (executions.pages).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Production hardening that only makes sense behind TLS; the demo runs on plain HTTP.
# docs/deployment.md#production-settings gives the environment `check --deploy` passes with.
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = os.environ.get("SECURE_SSL_REDIRECT", "0") == "1"
# Probes and scrapes reach a process directly, on plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = os.environ.get("SECURE_HSTS_INCLUDE_SUBDOMAINS", "0") == "1"
SECURE_HSTS_PRELOAD = os.environ.get("SECURE_HSTS_PRELOAD", "0") == "1"
# Behind a proxy that terminates TLS: the header it sets to the original scheme, e.g.
# X-Forwarded-Proto. Only where the proxy always sets it (and strips a client's own):
# Django then takes a request with "https" in it for a secure one.
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + os.environ["SECURE_PROXY_SSL_HEADER"].upper().replace("-", "_"),
        "https",
    )
# Origins allowed to POST forms (login, admin, cancel) besides the request's own host,
# comma-separated with their scheme: https://admin.example.com.
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# One JSON line per record (LOG_FORMAT=json, the default with DEBUG off), each with the
# request id of the request or stream that logged it and the grant's display name.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "apikeys.logs.RequestContextFilter"}},
    "formatters": {
        "json": {"()": "apikeys.logs.JSONFormatter"},
        "text": {"format": "%(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": LOG_FORMAT,
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Django's own console handler would print each of its records a second time.
    "loggers": {"django": {"handlers": [], "propagate": True}},
}
