"""How many streams one API key (or one user's session) holds open at once, across every
server process: ``EXECUTIONS["MAX_STREAMS_PER_KEY"]``.

With ``APIKEYS["RATE_LIMIT_REDIS_URL"]`` the counts live in Redis, one per key and
process, and a process's counts stop counting once it has not renewed its heartbeat for
``SLOT_TTL`` keepalive intervals: a process that dies leaks no slot for long. Without it,
each process counts its own streams.
"""

import logging
import math
import os
import threading
import uuid

from apikeys.conf import get_config as apikeys_config
from apikeys.exceptions import RateLimitExceeded, ServiceUnavailable
from apikeys.ratelimit import redis_client

from .conf import get_config

logger = logging.getLogger(__name__)

# A process's counts outlive its last heartbeat by this many keepalive intervals.
SLOT_TTL = 3
PROCESS_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

# Renew this process's heartbeat (until the fan-out's ticker first has, a count with no
# heartbeat looks like a dead process's, and the next acquire would forget it), count the
# live processes' slots of a key, forget the dead ones', and take one slot if fewer than
# the limit are held: -1 when the key is at its limit, else the new count. One round trip.
ACQUIRE = """
redis.call('SET', ARGV[3] .. ARGV[1], 1, 'EX', ARGV[4])
local total = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if redis.call('EXISTS', ARGV[3] .. counts[i]) == 1 then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
if total >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], 86400)
return total + 1
"""

# Give one of this process's slots of a key back, unless Redis holds none: a Redis that
# restarted forgot the counts, and a count below zero would let the key hold more.
RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
"""


class Slot:
    """One open stream's place in its key's count; ``release()`` gives it back, once."""

    __slots__ = ("owner", "store")

    def __init__(self, store, owner):
        self.store, self.owner = store, owner

    def release(self):
        store, self.store = self.store, None
        if store is not None:
            store.release(self.owner)


class LocalStore:
    """This process's own counts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def acquire(self, owner, limit):
        with self.lock:
            held = self.counts.get(owner, 0)
            if held >= limit:
                return False
            self.counts[owner] = held + 1
            return True

    def release(self, owner):
        with self.lock:
            held = self.counts.get(owner, 0) - 1
            if held > 0:
                self.counts[owner] = held
            else:
                self.counts.pop(owner, None)

    def renew(self):
        pass


class RedisStore:
    """The counts of every process, in Redis."""

    def __init__(self, url, prefix):
        self.client = redis_client(url)
        self.prefix = prefix
        self.heartbeat_prefix = f"{prefix}:process:"
        self.acquire_script = self.client.register_script(ACQUIRE)
        self.release_script = self.client.register_script(RELEASE)

    def key(self, owner):
        return f"{self.prefix}:{owner}"

    def acquire(self, owner, limit):
        held = self.acquire_script(
            keys=[self.key(owner)],
            args=[PROCESS_ID, limit, self.heartbeat_prefix, heartbeat_seconds()],
        )
        return held != -1

    def release(self, owner):
        try:
            self.release_script(keys=[self.key(owner)], args=[PROCESS_ID])
        except Exception as exc:  # the heartbeat's end frees it
            logger.warning("Releasing a stream slot failed: %r", exc)

    def renew(self):
        self.client.set(self.heartbeat_prefix + PROCESS_ID, 1, ex=heartbeat_seconds())


def heartbeat_seconds():
    return max(math.ceil(SLOT_TTL * get_config()["KEEPALIVE_INTERVAL"]), 1)


_stores = {}


def _where():
    config = apikeys_config()
    return config["RATE_LIMIT_REDIS_URL"], f"{config['RATE_LIMIT_KEY_PREFIX']}:streams"


def store():
    """Return the process's store of counts for the current settings."""
    url, prefix = where = _where()
    found = _stores.get(where)
    if found is None:
        found = _stores[where] = RedisStore(url, prefix) if url else LocalStore()
    return found


def acquire(owner):
    """Return a ``Slot`` for one more stream of ``owner`` (``"key:12"``), or None when
    there is no limit; raise ``RateLimitExceeded`` when the owner holds the most."""
    limit = get_config()["MAX_STREAMS_PER_KEY"]
    if limit is None or owner is None:
        return None
    counts = store()
    try:
        taken = counts.acquire(owner, limit)
    except Exception as exc:
        # The counts' store is down: as for requests, RATE_LIMIT_FAIL_OPEN decides.
        if apikeys_config()["RATE_LIMIT_FAIL_OPEN"]:
            logger.warning("Counting open streams failed, stream let in: %r", exc)
            return None
        logger.error("Counting open streams failed, stream refused: %r", exc)
        raise ServiceUnavailable("The rate-limit store is unavailable. Retry shortly.") from exc
    if not taken:
        retry_after = max(math.ceil(get_config()["KEEPALIVE_INTERVAL"]), 1)
        raise RateLimitExceeded(
            f"This key already holds {limit} open streams, the most it may.",
            details={"limit": limit, "window": "open_streams", "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
    return Slot(counts, owner)


def renew():
    """Renew this process's heartbeat (the fan-out's ticker calls it), if it counts in
    Redis."""
    counts = _stores.get(_where())
    if counts is not None:
        counts.renew()
