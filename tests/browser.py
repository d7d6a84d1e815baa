"""Debian's Chromium driven by Playwright's sync API, for the browser tests
(``tests/test_browser.py``), and what those tests do on a page: log in through the site's
form, take screenshots, serve a page of another origin.

No browser is downloaded (``playwright install`` cannot reach its servers here):
Playwright drives ``/usr/bin/chromium``, which ``make test`` installs.
"""

import contextlib
import http.server
import os
import re
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.live_server import HOST, free_port

CHROMIUM = Path("/usr/bin/chromium")
# Root on a closed network: no sandbox (it needs an unprivileged user), no GPU, and none of
# the background connections to Google's services, which this machine's network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 30_000
# How long a page may take to show what must come; far above what it takes.
TIMEOUT_MS = 10_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium():
    """Run headless Chromium for the block; yield Playwright's ``Browser``."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. "
            "`make test` installs it (apt-get install chromium).",
            pytrace=False,
        )
    # Playwright's sync API runs its asyncio loop in a greenlet of this thread, so while it
    # is up asyncio reports a running loop to everything in the thread, and Django refuses
    # the tests' own ORM calls (SynchronousOnlyOperation) though nothing runs concurrently.
    # The server processes do not inherit this (server_env() clears it).
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        expect.set_options(timeout=TIMEOUT_MS)
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            browser.close()


def server_env(**env):
    """The environment of a server process for these tests: Django's async-safety checks
    stay on there."""
    return {"DJANGO_ALLOW_ASYNC_UNSAFE": "", **env}


def log_in(page, server, username, password, path):
    """Open ``path``, which sends to the login form, log in there, and land on ``path``."""
    page.goto(server.url + path)
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(server.url + path)


def screenshot(page, name, *, full_page=False):
    """Write the page, from its top, to ``$SCREENSHOTS_DIR/<name>.png`` when the variable
    is set (``make screenshots``): its viewport, or with ``full_page`` the whole page. Do
    nothing otherwise, so the suite leaves the checkout clean."""
    directory = os.environ.get("SCREENSHOTS_DIR")
    if not directory:
        return
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=full_page, animations="disabled", caret="hide")


class _OnePage(http.server.BaseHTTPRequestHandler):
    html = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve_page(html):
    """Serve ``html`` at every path of ``http://127.0.0.1:<free port>`` from a thread, for
    the block: a site of another origin than the server's. Yield its origin."""
    handler = type("Page", (_OnePage,), {"html": html.encode()})
    server = http.server.ThreadingHTTPServer((HOST, free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, name="other-origin", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
