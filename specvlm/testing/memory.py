"""The peak growth of this process's resident memory while a call runs (tests of input bounds)."""

from __future__ import annotations

import threading
import time


def rss_growth(fn, interval: float = 0.002) -> tuple[object, float]:
    """fn()'s result and the peak growth of this process's resident memory while it ran, in GiB
    (sampled every ``interval`` seconds on a thread of its own). Needs psutil (the test extra)."""
    import psutil

    process = psutil.Process()
    base, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, (max(peak[0], process.memory_info().rss) - base) / 2**30
