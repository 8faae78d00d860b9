"""Run a blocking model generator (Soprano's `infer_stream`, llama-cpp-python's token stream) in a
worker thread and consume it as an async iterator.

Why: in-process model libraries expose synchronous generators; a Serve replica's event loop must stay
free, and closing the async side (interrupt, client gone) must stop the model between two steps
instead of letting it run to the end of the utterance.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked producer looks at the stop flag


@dataclass
class _Failed:
    error: BaseException


class _Done:
    pass


class ThreadedStream(Generic[T]):
    """Iterate `make_iterator()` in a daemon thread; `async for item in stream` on the loop side.

    At most `max_buffered` items wait in between, so a slow consumer slows the model down instead of
    piling audio up in memory. `stop()` (also called when the async iteration is closed or cancelled)
    makes the thread close the generator after its current step. `stopped_after_close` tells tests
    and /healthz whether the producer really stopped early.
    """

    def __init__(self, make_iterator: Callable[[], Iterator[T]], max_buffered: int = 4, name: str = "model-stream"):
        if max_buffered < 1:
            raise ValueError("max_buffered must be >= 1")
        self._make_iterator = make_iterator
        self._max_buffered = max_buffered
        self._name = name
        self._stop = threading.Event()
        self._finished = threading.Event()
        # Backpressure without a round trip per item: the producer takes a slot per item, the
        # consumer gives it back when it takes the item.
        self._slots = threading.Semaphore(max_buffered)
        self.items_produced = 0
        self.stopped_early = False

    def stop(self) -> None:
        self._stop.set()

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until the producer thread has returned (True) or `timeout` passed (False)."""
        return self._finished.wait(timeout)

    async def __aiter__(self) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        thread = threading.Thread(target=self._produce, args=(loop, queue), name=self._name, daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                self._slots.release()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self._stop.set()

    def _produce(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        iterator = None
        try:
            iterator = self._make_iterator()
            for item in iterator:
                if not self._put(loop, queue, item):
                    self.stopped_early = True
                    return
                self.items_produced += 1
                if self._stop.is_set():
                    self.stopped_early = True
                    return
            self._put(loop, queue, _Done())
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(loop, queue, _Failed(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # runs the generator's cleanup (frees the KV cache, etc.)
                except Exception:  # noqa: BLE001 - cleanup must not mask the real outcome
                    pass
            self._finished.set()

    def _put(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: object) -> bool:
        """Hand one item to the loop, waiting for a free slot; False when the consumer has gone."""
        while not self._slots.acquire(timeout=_POLL_S):
            if self._stop.is_set() or loop.is_closed():
                return False
        if self._stop.is_set():
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True
