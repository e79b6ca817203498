"""Run an iterator's producer in a background thread, a bounded number of items ahead.

``prefetch(source, size=2, transform=f)`` yields ``f(x)`` for each ``x`` of
``source``; a thread computes them ahead of the consumer, at most ``size``
finished items waiting in the queue (plus the one the thread is working on),
so host memory stays bounded by ``size + 1`` items whatever the data size.
Use it to overlap Parquet decoding and host->device transfer
(``jax.device_put`` in ``transform``; JAX copies asynchronously and the
device computes the previous item meanwhile) with device work: with
``size=2`` that is the classic double buffer.

Errors in the producer are raised in the consumer, at the item where they
happened; closing the consumer (``break``, ``close()``) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(source: Iterable[T], size: int = 2, transform: Callable[[T], U] | None = None) -> Iterator[U]:
    """Yield ``transform(x)`` for ``x`` in ``source``, produced by a thread ``size`` items ahead."""
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for x in source:
                if not put(transform(x) if transform is not None else x):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="fgjax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
