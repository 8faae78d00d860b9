"""Keep Python's garbage collector from pausing the voice path.

A replica process holds ~150,000 objects once Ray, Serve, FastAPI and the backends are imported and
set up. A full (generation 2) collection walks all of them: about 70 ms on the 2-core test box, and
streaming audio allocates enough to trigger one now and then. Those pauses were the slow tail of time
to first audio. Objects that exist when a replica finishes starting live as long as the process, so
they are moved out of the collector's sight once (`gc.freeze()`, CPython's tool for exactly this); what
an utterance allocates is still collected as before, now without walking the start-up heap.
"""
from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze what survives; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
