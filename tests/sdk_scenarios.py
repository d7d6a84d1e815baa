"""Drive the API with FlowMaestro's official Python SDK; run by the SDK's own interpreter.

    python -I tests/sdk_scenarios.py --base-url http://127.0.0.1:8000 --client sync \\
        workflows run stream cancel errors

Keys come from the environment: ``FM_KEY`` (full access) and ``FM_LIMITED_KEY`` (only
``workflows:read``). Prints one line of JSON, ``{scenario: result}``, for the test to
assert on. The PyPI package ``flowmaestro`` shares its name with the project's host site,
so this must run outside the project root and outside its virtualenv.
"""

import argparse
import asyncio
import inspect
import json
import os
import sys
from pathlib import Path

import flowmaestro
from flowmaestro import (
    AsyncFlowMaestroClient,
    AuthenticationError,
    AuthorizationError,
    FlowMaestroClient,
    FlowMaestroError,
    NotFoundError,
    ValidationError,
)

SDK_ERRORS = (AuthenticationError, AuthorizationError, NotFoundError, ValidationError)
MISSING_EXECUTION = "exec_doesNotExist0000000000"
UNKNOWN_KEY = "fm_live_" + "0" * 32
MAX_EVENTS = 200  # a stream that does not end is a failure, not a hang


async def resolve(value):
    """Await ``value`` if the async client returned an awaitable."""
    return await value if inspect.isawaitable(value) else value


async def events_of(stream, on_event=None):
    """Collect a stream's events until the server ends it; ``on_event`` may act on each."""
    collected = []

    async def take(event):
        collected.append(event)
        if len(collected) > MAX_EVENTS:
            raise RuntimeError(f"The stream did not end after {MAX_EVENTS} events.")
        if on_event is not None:
            await on_event(event)

    if hasattr(stream, "__aiter__"):
        async for event in stream:
            await take(event)
    else:
        for event in stream:
            await take(event)
    return collected


def error_report(error):
    return {
        "class": type(error).__name__,
        "sdk_classes": [cls.__name__ for cls in SDK_ERRORS if isinstance(error, cls)],
        "code": error.code,
        "status_code": error.status_code,
        "message": error.message,
        "details": error.details,
        "request_id": error.request_id,
    }


async def expect_error(call):
    """Run ``call()`` (sync or async) and report the SDK error it raises."""
    try:
        result = call()
        if hasattr(result, "__aiter__") or inspect.isgenerator(result):
            await events_of(result)
        else:
            await resolve(result)
    except FlowMaestroError as error:
        return error_report(error)
    raise AssertionError("The call raised no FlowMaestroError.")


async def execute(client, **inputs):
    return await resolve(client.workflows.execute("wf_demo", inputs=inputs))


# Scenarios: each takes the clients and returns what the test asserts on. ---------------


async def workflows(clients):
    client = clients["full"]
    return {
        "list": await resolve(client.workflows.list()),
        "list_page": await resolve(client.workflows.list(page=1, per_page=1)),
        "get": await resolve(client.workflows.get("wf_demo")),
    }


async def run(clients):
    client = clients["full"]
    started = await execute(client, nodes=2, delay_ms=50)
    execution_id = started["data"]["execution_id"]
    finished = await resolve(
        client.executions.wait_for_completion(execution_id, poll_interval=0.05, timeout=30)
    )
    return {
        "execute": started,
        "finished": finished,
        "get": await resolve(client.executions.get(execution_id)),
        "list": await resolve(client.executions.list(workflow_id="wf_demo", status="completed")),
        "list_page": await resolve(client.executions.list(page=1, per_page=1)),
    }


async def stream(clients):
    client = clients["full"]
    started = await execute(client, nodes=3, delay_ms=200)
    execution_id = started["data"]["execution_id"]
    return {
        "execute": started,
        "events": await events_of(client.executions.stream(execution_id)),
    }


async def cancel(clients):
    client = clients["full"]
    started = await execute(client, nodes=5, delay_ms=200)
    execution_id = started["data"]["execution_id"]
    cancelled = {}

    async def cancel_after_first_node(event):
        if event["type"] == "node:completed" and not cancelled:
            cancelled.update(await resolve(client.executions.cancel(execution_id)))

    events = await events_of(client.executions.stream(execution_id), cancel_after_first_node)
    return {
        "execute": started,
        "cancel": cancelled,
        "events": events,
        "get": await resolve(client.executions.get(execution_id)),
        "cancel_again": await expect_error(lambda: client.executions.cancel(execution_id)),
    }


async def errors(clients):
    full, limited, unknown = clients["full"], clients["limited"], clients["unknown"]
    return {
        "unknown_key": await expect_error(lambda: unknown.workflows.list()),
        "missing_scope": await expect_error(lambda: limited.executions.list()),
        "missing_execution": await expect_error(lambda: full.executions.get(MISSING_EXECUTION)),
        "missing_workflow": await expect_error(lambda: full.workflows.get("wf_nope")),
        "bad_inputs": await expect_error(
            lambda: full.workflows.execute("wf_demo", inputs={"nodes": "three", "colour": 1})
        ),
        "bad_status": await expect_error(lambda: full.executions.list(status="done")),
        "stream_missing_execution": await expect_error(
            lambda: full.executions.stream(MISSING_EXECUTION)
        ),
    }


SCENARIOS = {scenario.__name__: scenario for scenario in (workflows, run, stream, cancel, errors)}


def check_sdk_is_the_pypi_package():
    location = Path(flowmaestro.__file__).resolve()
    if "site-packages" not in location.parts:
        sys.exit(f"flowmaestro was imported from {location}, not from the SDK's site-packages.")


async def main(arguments):
    check_sdk_is_the_pypi_package()
    client_class = FlowMaestroClient if arguments.client == "sync" else AsyncFlowMaestroClient
    keys = {
        "full": os.environ["FM_KEY"],
        "limited": os.environ["FM_LIMITED_KEY"],
        "unknown": UNKNOWN_KEY,
    }
    # No retries: a 5xx or a 429 is a failure to see at once, not to wait out.
    clients = {
        name: client_class(key, base_url=arguments.base_url, max_retries=0)
        for name, key in keys.items()
    }
    try:
        results = {name: await SCENARIOS[name](clients) for name in arguments.scenarios}
    finally:
        for client in clients.values():
            await resolve(client.close())
    results["sdk"] = {"version": flowmaestro.__version__, "file": flowmaestro.__file__}
    print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--client", choices=["sync", "async"], required=True)
    parser.add_argument("scenarios", nargs="+", choices=list(SCENARIOS))
    asyncio.run(main(parser.parse_args()))
