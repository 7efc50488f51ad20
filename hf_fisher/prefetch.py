"""Batches for the Fisher loop, read and prepared ahead of the compute, with the wait timed.

Decoding images and running the processor cost as much as a cheap Fisher product; done
inline, the compute waits for them every batch. A bounded background thread
(:func:`prefetched`) reads, decodes and prepares the next batches while the current one is
computed. It only moves work in time: every batch is prepared by the same code, in the same
order, so the records do not depend on ``prefetch``. :class:`WaitClock` measures what is left
of the wait, for ``environment.fisher_loop`` in results.json.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from hf_fisher.data import DecodedRows, decode_pairs, decode_rows, stream_rows

T = TypeVar("T")
POLL_S = 0.1
"""How often a producer blocked on a full queue checks whether the loop has stopped."""


@dataclass
class ReadyBatch:
    """One batch of the Fisher loop, decoded and prepared.

    Attributes:
        positions: the dataset rows (stream positions) this batch covers, skipped ones included.
        decoded: the decoded rows (inputs, labels, skipped rows).
        prepared: ``Classifier.prepare`` of the decoded inputs; None when none could be read.
    """

    positions: list[int]
    decoded: DecodedRows
    prepared: Any | None


@dataclass(frozen=True)
class RowReader:
    """Turns dataset rows into :class:`ReadyBatch` es: by index (a ``Dataset``) or in stream order.

    Attributes:
        rows: a ``datasets.Dataset``, ``IterableDataset`` or :class:`~hf_fisher.data.InMemoryRows`.
        columns, label_column, modality, alignment: as :func:`~hf_fisher.data.decode_rows`.
        prepare: ``Classifier.prepare``.
    """

    rows: Any
    columns: list[str]
    label_column: str | None
    modality: str
    alignment: Any
    prepare: Callable[[list], Any]

    def _ready(self, positions: list[int], decoded: DecodedRows) -> ReadyBatch:
        prepared = self.prepare(decoded.inputs) if decoded.indices else None
        return ReadyBatch(positions, decoded, prepared)

    def indexed(self, batches: Iterable[list[int]]) -> Iterator[ReadyBatch]:
        """One ready batch per list of row indices (an empty list gives an empty batch)."""
        for positions in batches:
            if not positions:
                yield ReadyBatch([], DecodedRows([], [], None), None)
                continue
            decoded = decode_rows(
                self.rows, positions, self.columns, self.label_column, self.modality, self.alignment
            )
            yield self._ready(list(positions), decoded)

    def streamed(
        self, keep: Callable[[int], bool], stop: int | None, batch_size: int
    ) -> Iterator[ReadyBatch]:
        """Batches of the stream's rows at positions ``keep`` accepts, before ``stop``.

        Rows passed over (another process's, or done before a resume) are read but not decoded.
        """
        pairs = stream_rows(self.rows, self.columns, self.modality)
        for chunk in stream_batches(pairs, keep, stop, batch_size):
            decoded = decode_pairs(
                chunk, self.columns, self.label_column, self.modality, self.alignment
            )
            yield self._ready([position for position, _ in chunk], decoded)


def stream_batches(
    pairs: Iterable[tuple[int, T]], keep: Callable[[int], bool], stop: int | None, size: int
) -> Iterator[list[tuple[int, T]]]:
    """Group the ``(position, row)`` pairs that ``keep`` accepts into lists of ``size``.

    Reading ends at position ``stop`` (None: the end of the stream): a stream is never read
    further than the rows asked for.

    >>> even = lambda position: position % 2 == 0
    >>> [[p for p, _ in b] for b in stream_batches(enumerate("abcdefg"), even, 6, 2)]
    [[0, 2], [4]]
    """
    batch: list[tuple[int, T]] = []
    for position, row in pairs:
        if stop is not None and position >= stop:
            break
        if not keep(position):
            continue
        batch.append((position, row))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def shard_of_stream(num_processes: int, rank: int, done: set[int]) -> Callable[[int], bool]:
    """Which stream positions this process computes: ``position % num_processes == rank``.

    Every process reads the whole stream (a stream has no random access) and keeps its own
    rows, so the shards need no row count, and rows already done (a resume) are passed over.

    >>> keep = shard_of_stream(2, 1, done={3})
    >>> [p for p in range(8) if keep(p)]
    [1, 5, 7]
    """
    return lambda position: position % num_processes == rank and position not in done


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` items ahead (0: inline).

    An error in the producer is raised here, where its item would have been consumed. Closing
    the returned generator (or an error in the consumer) stops the producer after its current
    item. The producer runs Python code in another thread: torch and PIL release the GIL in
    their kernels, so decoding overlaps the Fisher products.
    """
    if depth == 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(
        target=_produce, args=(items, slots, stop), name="hf-fisher-prefetch", daemon=True
    )
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _produce(items: Iterator, slots: queue.Queue, stop: threading.Event) -> None:
    """Put every item (then the end marker, or the error raised) until told to stop."""
    try:
        for item in items:
            if not _put(slots, (item, None), stop):
                return
        _put(slots, (_END, None), stop)
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
        _put(slots, (_END, error), stop)


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put ``entry`` when there is room; False if the consumer stopped first."""
    while not stop.is_set():
        try:
            slots.put(entry, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


@dataclass
class WaitClock:
    """How long a loop waited for its next item, against the loop's whole wall time.

    Attributes:
        waited_s: seconds spent in ``next()`` on the items (decoding, or waiting for the
            prefetch thread).
        loop_s: seconds from the first request to the end of the items.
    """

    waited_s: float = 0.0
    loop_s: float = 0.0

    def timed(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, timing each request; the loop time ends when they run out."""
        iterator = iter(items)
        started = time.perf_counter()
        try:
            while True:
                asked = time.perf_counter()
                try:
                    item = next(iterator)
                finally:
                    self.waited_s += time.perf_counter() - asked
                yield item
        except StopIteration:
            return
        finally:
            self.loop_s = time.perf_counter() - started

    @property
    def fraction(self) -> float | None:
        """``waited_s / loop_s`` in [0, 1]; None when the loop did not run (nothing pending)."""
        if self.loop_s <= 0:
            return None
        return min(1.0, self.waited_s / self.loop_s)

    def to_json(self, prefetch: int) -> dict:
        """``environment.fisher_loop`` of results.json."""
        return {
            "prefetch": prefetch,
            "wall_time_s": self.loop_s,
            "data_wait_s": self.waited_s,
            "data_wait_fraction": self.fraction,
        }
