"""Event streams opened in process, through Django's ``AsyncClient`` or driven as an ASGI
server drives the handler (``Exchange``), for the tests of the stream and its ways in."""

import asyncio
import json

from django.test import AsyncClient

from tests.hub import TIMEOUT, eventually
from tests.live_server import events_url, frames_of, ids_of, without_keepalives


async def get(execution_id, raw=None, *, query="", client=None, **headers):
    """Request the stream; ``raw`` goes in ``X-API-Key``; ``client`` (a logged-in one, say)
    defaults to a new ``AsyncClient``."""
    if raw is not None:
        headers.setdefault("X-API-Key", raw)
    client = client or AsyncClient()
    return await client.get(events_url(execution_id) + query, headers=headers)


class Stream:
    """An open event stream, read to its end in the background."""

    def __init__(self, response):
        self.response = response
        self.body = b""
        self.writes = []  # the body as the server wrote it
        self.task = asyncio.create_task(self.read())

    async def read(self):
        async for chunk in self.response.streaming_content:
            self.body += chunk
            self.writes.append(chunk)

    @property
    def frames(self):
        return frames_of(self.body)

    @property
    def events_body(self):
        return without_keepalives(self.body)

    @property
    def ids(self):
        return ids_of(self.body)

    async def wait_for(self, predicate, within=TIMEOUT):
        """Wait until ``predicate(self)`` holds; fail if the stream ends first."""

        def holds():
            if predicate(self):
                return True
            if self.task.done():
                self.task.result()
                raise AssertionError("The stream ended first")
            return False

        try:
            await eventually(holds, within)
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.body!r}") from None

    async def end(self, within=TIMEOUT):
        """Wait for the server to end the stream; return the whole body."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), within)
        except TimeoutError:
            raise AssertionError(f"Still open after {within} s: {self.body!r}") from None
        return self.body

    async def close(self):
        """Stop reading, as a client that goes away (a reader's error is the test's to
        assert, through ``wait_for`` or ``end``)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def assert_error(response, status, code):
    """Assert an error envelope answered instead of a stream; return its ``error``."""
    assert response.status_code == status
    assert not response.streaming
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["error"]["code"] == code
    assert set(body["meta"]) == {"request_id", "timestamp"}
    assert response["X-Request-ID"] == body["meta"]["request_id"]
    return body["error"]


class Exchange:
    """One request served by the handler, with the client's side of ``receive``/``send``."""

    def __init__(self, handler, path, headers=(), query=b"", root_path=""):
        self.messages = []
        self.received = asyncio.Event()
        self.gone = asyncio.Event()
        self.requested = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": root_path,
            "query_string": query,
            "headers": [
                *(
                    []
                    if any(name == b"host" for name, _ in headers)
                    else [(b"host", b"testserver")]
                ),
                *headers,
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.task = asyncio.create_task(handler(scope, self.receive, self.send))

    async def receive(self):
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.messages.append(message)
        self.received.set()

    @property
    def start(self):
        return self.messages[0]

    @property
    def body(self):
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def complete(self):
        last = self.messages[-1] if len(self.messages) > 1 else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)

    async def wait_for(self, predicate):
        async with asyncio.timeout(TIMEOUT):
            while not predicate(self):
                self.received.clear()
                await self.received.wait()

    async def disconnect(self):
        self.gone.set()
        await asyncio.wait_for(self.task, TIMEOUT)

    async def finished(self):
        await asyncio.wait_for(self.task, TIMEOUT)
        return self
