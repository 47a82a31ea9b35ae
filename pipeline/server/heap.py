"""Keep the cyclic garbage collector from stopping a busy server's event loop.

A full (generation 2) collection walks every tracked object, and a server's start-up
heap (modules, numpy and scipy, a bot's models) is hundreds of thousands of objects
that live as long as the process. At 200 parrot calls on two workers, each full
collection stopped a worker's loop for 100-200 ms (measured), every few seconds: the
jitter buffers then played frames before their packets were read (late packets).
"""

from __future__ import annotations

import gc

__all__ = ["freeze_start_up_heap"]

_frozen = False


def freeze_start_up_heap() -> None:
    """Collect once, then take every object alive now out of later collections' scans;
    once per process (later calls do nothing).

    Frozen objects are still freed by reference counting; only cycles among them
    would stay, and modules and loaded models are not garbage. Call it when start-up
    is done: after the models load, before serving.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
