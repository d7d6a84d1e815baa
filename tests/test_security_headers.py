"""Security headers on the HTML pages: those the demo site's settings give every page (the
live pages, the login, the admin), and the live pages' own ``Content-Security-Policy``
(``executions.pages``), which the live page follows its stream under in a real browser."""

import uuid
from html.parser import HTMLParser

import pytest
from django.db import connections
from django.urls import reverse
from playwright.sync_api import expect

from executions.pages import CONTENT_SECURITY_POLICY
from tests.browser import chromium, log_in, serve_page, server_env
from tests.live_server import live_server
from tests.runs import completed_run, running

CSP = "Content-Security-Policy"
LIST_URL = reverse("execution_pages:execution-list")
# What a mature Django site sends on every page: SecurityMiddleware and
# XFrameOptionsMiddleware, as flowmaestro/settings.py configures them.
SITE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def detail_url(execution_id):
    return reverse("execution_pages:execution-detail", args=[execution_id])


def directives(policy):
    """``{directive: [sources]}`` of a policy."""
    return {
        name: sources
        for name, *sources in (part.split() for part in policy.split(";") if part.strip())
    }


class Resources(HTMLParser):
    """The URLs a page loads or connects to: scripts, stylesheets, the event stream."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for attribute in ("src", "data-events-url"):
            if attrs.get(attribute):
                self.urls.append(attrs[attribute])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def html_page(page, user):
    """The path of one of the demo site's HTML pages, which ``user`` may see."""
    paths = {
        "list": lambda: LIST_URL,
        "list rows": lambda: f"{LIST_URL}?partial=rows",
        "live page": lambda: detail_url(running(user).execution_id),
        "finished page": lambda: detail_url(completed_run(user)),
        "login": lambda: "/accounts/login/",
        "admin login": lambda: reverse("admin:login"),
        "admin index": lambda: reverse("admin:index"),
        "admin keys": lambda: reverse("admin:apikeys_apikey_changelist"),
    }
    return paths[page]()


LIVE_PAGES = ["list", "list rows", "live page", "finished page"]
HOST_PAGES = ["login", "admin login", "admin index", "admin keys"]
LOGGED_OUT_PAGES = {"login", "admin login"}


@pytest.fixture
def get_page(client, admin_client, admin_user):
    """GET a page of the site as staff, or logged out for the login pages."""

    def get(page):
        browser = client if page in LOGGED_OUT_PAGES else admin_client
        return browser.get(html_page(page, admin_user))

    return get


@pytest.mark.django_db
@pytest.mark.parametrize("page", LIVE_PAGES + HOST_PAGES)
def test_every_html_page_sends_the_sites_security_headers(get_page, page):
    response = get_page(page)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert {name: response.get(name) for name in SITE_HEADERS} == SITE_HEADERS


@pytest.mark.django_db
@pytest.mark.parametrize("page", LIVE_PAGES)
def test_the_live_pages_allow_only_the_sites_own_scripts_styles_and_connections(alice, user, page):
    response = alice.get(html_page(page, user))

    assert response.status_code == 200
    policy = directives(response[CSP])
    assert policy == {
        "default-src": ["'self'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
    }
    assert "unsafe" not in response[CSP]


@pytest.mark.django_db
def test_the_redirect_to_the_login_carries_the_policy_too(client, user):
    response = client.get(detail_url(completed_run(user)))

    assert response.status_code == 302
    assert response[CSP] == CONTENT_SECURITY_POLICY


@pytest.mark.django_db
@pytest.mark.parametrize("page", HOST_PAGES)
def test_the_apps_impose_no_policy_on_the_hosts_own_pages(get_page, page):
    response = get_page(page)

    assert response.status_code == 200
    assert CSP not in response


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["list", "live page"])
def test_what_the_live_pages_load_and_connect_to_is_on_the_site_itself(alice, user, page):
    response = alice.get(html_page(page, user))

    parser = Resources()
    parser.feed(response.content.decode())
    assert parser.urls
    if page == "live page":
        assert any(url.startswith("/api/v1/executions/") for url in parser.urls)
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url


@pytest.mark.django_db
def test_a_site_wide_django_policy_leaves_the_live_pages_their_own(admin_client, settings):
    pytest.importorskip("django.middleware.csp", reason="Django 6's CSP support")
    from django.utils.csp import CSP as SOURCES

    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "django.middleware.csp.ContentSecurityPolicyMiddleware",
    ]
    settings.SECURE_CSP = {"default-src": [SOURCES.SELF, "https://cdn.example.com"]}

    assert admin_client.get(LIST_URL)[CSP] == CONTENT_SECURITY_POLICY
    assert "https://cdn.example.com" in admin_client.get(reverse("admin:index"))[CSP]


# In a real browser: the live page works under its policy, which the browser enforces.

# Records every violation of the page's policy (an init script is exempt from it).
RECORD_VIOLATIONS = """
window.violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.violations.push(`${event.effectiveDirective} ${event.blockedURI}`);
});
"""
# Tries an inline script and a connection to another origin; the policy refuses both.
TRY_WHAT_THE_POLICY_REFUSES = """async (elsewhere) => {
  const script = document.createElement("script");
  script.textContent = "window.inlineRan = true;";
  document.head.append(script);
  let fetched = true;
  try { await fetch(elsewhere); } catch (error) { fetched = false; }
  return {inlineRan: window.inlineRan === true, fetched};
}"""


@pytest.mark.django_db(transaction=True)
def test_the_live_page_follows_its_stream_under_its_policy_in_a_real_browser(django_db_setup, user):
    recorder = running(user)
    path = detail_url(recorder.execution_id)
    env = server_env(
        EXECUTIONS_KEEPALIVE="0.5", APIKEYS_RATE_LIMIT_KEY_PREFIX=f"test-rl:{uuid.uuid4().hex}"
    )
    with (
        live_server("uvicorn", **env) as server,
        serve_page("<!DOCTYPE html><title>elsewhere</title>") as elsewhere,
        chromium() as browser,
    ):
        context = browser.new_context()
        page = context.new_page()
        page.add_init_script(RECORD_VIOLATIONS)
        console, errors = [], []
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda error: errors.append(error))
        try:
            log_in(page, server, "alice", "alice-password-1", path)
            response = page.reload()
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-frame-options"] == "DENY"

            stream_state = page.locator("[data-stream-state]")
            expect(stream_state).to_have_attribute("data-stream-state", "live")
            recorder.start_node("fetch", "http")
            expect(page.locator('[data-node-id="fetch"]')).to_have_attribute(
                "data-status", "running"
            )
            recorder.complete({"ok": True})
            expect(page.locator("#execution")).to_have_attribute("data-status", "completed")
            expect(stream_state).to_have_attribute("data-stream-state", "finished")
            assert page.evaluate("window.violations") == []
            assert not [text for text in console if "Content Security Policy" in text]
            assert not errors, errors

            tried = page.evaluate(TRY_WHAT_THE_POLICY_REFUSES, f"{elsewhere}/")
            assert tried == {"inlineRan": False, "fetched": False}
            refused = [violation.split() for violation in page.evaluate("window.violations")]
            assert [directive for directive, _ in refused] == ["script-src-elem", "connect-src"]
            assert refused[1][1].startswith(elsewhere)
        finally:
            context.close()
            # The recorder's ORM calls under Playwright's loop hold connections of their
            # own: give them back before pytest-django drops the test database.
            connections.close_all()
