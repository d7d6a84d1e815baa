"""The production settings example of docs/deployment.md: ``check --deploy`` is clean with
exactly its environment, each variable in it is one a check asks for, and the settings
that no check covers come out of it as the docs say."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
DEPLOYMENT = BASE_DIR / "docs" / "deployment.md"
# The lines of the example that stand for values of the deployment's own.
PLACEHOLDERS = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}


def documented_environment():
    """The env file of the "Production settings" section, as ``{name: value}``."""
    section = DEPLOYMENT.read_text().split("\n## Production settings\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    return dict(line.split("=", 1) for line in block.splitlines())


def production_environment(**changes):
    """The documented environment, with the test's own database, Redis and a new random
    secret key for its placeholders; ``changes`` maps names to values, None leaves one out."""
    env = documented_environment()
    assert set(env) >= PLACEHOLDERS
    env |= {
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ["REDIS_URL"],
        "SECRET_KEY": secrets.token_urlsafe(50),
    }
    env |= changes
    return {name: value for name, value in env.items() if value is not None}


def run(*args, env):
    """Run ``python *args`` in the project with exactly ``env``; return the process."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_deploy(env):
    return run("manage.py", "check", "--deploy", "--fail-level", "WARNING", env=env)


def test_check_deploy_is_clean_with_exactly_the_documented_environment():
    checked = check_deploy(production_environment())

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "System check identified no issues (0 silenced)."


@pytest.mark.parametrize(
    ("name", "check_id"),
    [
        ("SECRET_KEY", "flowmaestro.E001"),
        ("DEBUG", "security.W018"),
        ("REDIS_URL", "executions.W001"),
        ("SECURE_SSL_REDIRECT", "security.W008"),
        ("SECURE_HSTS_SECONDS", "security.W004"),
        ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "security.W005"),
        ("SECURE_HSTS_PRELOAD", "security.W021"),
        ("ACCEPT_TEST_KEYS", "apikeys.W001"),
    ],
)
def test_each_variable_a_check_asks_for_is_reported_when_left_out(name, check_id):
    checked = check_deploy(production_environment(**{name: None}))

    assert checked.returncode == 1
    assert f"({check_id})" in checked.stderr


def test_the_settings_no_check_covers_come_from_the_documented_environment():
    names = [
        "DEBUG",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "APIKEYS",
    ]
    script = (
        "import json, flowmaestro.settings as s; "
        f"print(json.dumps({{name: getattr(s, name) for name in {names!r}}}))"
    )
    printed = run("-c", script, env=production_environment())

    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == {
        "DEBUG": False,
        "ALLOWED_HOSTS": ["api.example.com"],
        "CSRF_TRUSTED_ORIGINS": ["https://api.example.com"],
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "APIKEYS": {"RATE_LIMIT_REDIS_URL": os.environ["REDIS_URL"], "ACCEPT_TEST_KEYS": False},
    }
