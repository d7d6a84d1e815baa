"""Waiting on this process's fan-out hub, for tests that open streams in process."""

import asyncio

from executions.fanout import get_hub

# How long a test waits for something that must happen; far above what it takes.
TIMEOUT = 10.0


async def eventually(predicate, within=TIMEOUT):
    """Wait until ``predicate()`` holds."""
    try:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 (nothing signals the states tests watch)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"Still not true after {within} s") from None


def hub_is_idle():
    """Whether this process watches nothing: no topic, no receiver, no ticker (each topic
    leaves its group in its own task, a moment after its last stream ends)."""
    hub = get_hub()
    return hub.topics == {} and hub.receiver is None and hub.ticker is None
