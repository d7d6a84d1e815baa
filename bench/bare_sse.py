"""The floor: a bare ASGI app that answers the stream URL as ``stream_load.py`` expects.

It sends the opening frames and one replayed event, then holds the response open until
the client leaves, with no Django, no fan-out and no keepalives. Serving it with
``stream_load.py --idle --app bench.bare_sse:application`` measures what the ASGI
server itself costs per open stream.
"""

import json

OPENING = b'retry: 3000\n\nevent: connected\ndata: {"type": "connected"}\n\n'
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    if "exec_missing" in scope["path"]:
        body = json.dumps({"error": {"code": "not_found"}}).encode()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    started = b'id: 1\nevent: execution:started\ndata: {"type": "execution:started"}\n\n'
    await send({"type": "http.response.body", "body": OPENING + started, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
