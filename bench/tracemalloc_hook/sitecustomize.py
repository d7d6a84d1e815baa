"""Loaded by a server that ``stream_load.py --tracemalloc`` starts: trace allocations and
write a snapshot to ``$BENCH_TRACEMALLOC_DIR/<n>.snapshot`` on each SIGUSR1, of what is
alive: cyclic garbage is collected first."""

import gc
import itertools
import os
import signal
import tracemalloc

_directory = os.environ.get("BENCH_TRACEMALLOC_DIR")
if _directory:
    _numbers = itertools.count()

    def _dump(signum, frame):
        gc.collect()
        path = os.path.join(_directory, f"{next(_numbers)}.snapshot")
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "12")))
    signal.signal(signal.SIGUSR1, _dump)
