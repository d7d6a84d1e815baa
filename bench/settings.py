"""The demo site's settings for the benchmarks: one key opens every stream of a run, so
the per-key limit of open streams (MAX_STREAMS_PER_KEY, 100) is lifted; the rest is as
the demo site runs in production."""

from flowmaestro.settings import *  # noqa: F403
from flowmaestro.settings import EXECUTIONS

EXECUTIONS = {**EXECUTIONS, "MAX_STREAMS_PER_KEY": None}
