"""The integrator's side of docs/examples/browser-token.html: a tiny backend that mints
stream tokens with its API key and serves the page, on an origin of its own.

    FLOWMAESTRO_API_KEY=fm_live_... python docs/examples/token-backend.py [port]

GET /stream-url?execution=exec_...   {"url": "...", "expires_at": "..."}
GET /                                the page (open /?execution=exec_...)

The key stays in this process: only a token's URL reaches the browser. In your own site
this is a view behind your login that first checks that its user may watch the execution.
Standard library and httpx only.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote

import httpx

API_URL = os.environ.get("FLOWMAESTRO_API_URL", "http://127.0.0.1:8000").rstrip("/")
API_KEY = os.environ["FLOWMAESTRO_API_KEY"]  # a key with executions:read, server-side only
PAGE = Path(__file__).with_name("browser-token.html")


def stream_url(execution_id):
    """Mint a token for ``execution_id``'s event stream: the API's ``data``, with ``token``,
    ``expires_at`` and ``url`` (the events URL with ``?token=``). Raises
    ``httpx.HTTPStatusError`` when the API refuses (404 for an execution the key may not
    see, 401 for a revoked or expired key)."""
    response = httpx.post(
        f"{API_URL}/api/v1/executions/{quote(execution_id, safe='')}/stream-token",
        headers={"X-API-Key": API_KEY},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["data"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/":
            self.answer(200, "text/html; charset=utf-8", PAGE.read_bytes())
            return
        if path != "/stream-url":
            self.answer_json(404, {"error": "not_found"})
            return
        execution_id = parse_qs(query).get("execution", [""])[0]
        # Your site checks here that the signed-in user may watch this execution.
        try:
            data = stream_url(execution_id)
        except httpx.HTTPStatusError as error:
            try:
                code = error.response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "unknown"
            status = 404 if error.response.status_code == 404 else 502
            self.answer_json(status, {"error": code})
            return
        except httpx.HTTPError:
            self.answer_json(502, {"error": "api_unreachable"})
            return
        self.answer_json(200, {"url": data["url"], "expires_at": data["expires_at"]})

    def answer_json(self, status, body):
        self.answer(status, "application/json", json.dumps(body).encode())

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")  # a token's URL is not to be cached
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    print(f"Serving the page on http://127.0.0.1:{port}/?execution=exec_... (API: {API_URL})")
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
