"""One thread that owns the model: every forward pass of the server runs here, never on the loop.

Jobs are one-off calls (inspect, logits, ...) and streams (generations). The thread works in
rounds: one waiting call, then a turn for every stream, so a long reply does not hold up a short
one and calls run between two tokens. A stream is a generator. What it yields goes to its
consumer, except `Batched(work)`: the worker collects the work of every stream that asked for it
this round and hands it all to `run_batch` at once (one forward pass decodes every generation),
then sends each stream its own result. Each stream carries its own state, so batching never mixes
two requests' steering.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()  # a stream's last item
_STOP = object()  # tells the thread to exit
STOPPED_MESSAGE = "The inference worker has stopped; the server is shutting down."

# Runs one round's work items together; returns one result per item, in order. An exception
# instance as a result fails only that item's stream; raising fails every stream of the round.
BatchRunner = Callable[[list[Any]], Sequence[Any]]


class WorkerStopped(RuntimeError):
    """The worker was closed before it could run the job."""


@dataclass(frozen=True)
class Batched:
    """Yielded by a stream: run `work` together with the other streams' this round and send the
    result back into the stream. `ready` items go to the consumer first."""

    work: Any
    ready: tuple[Any, ...] = ()


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


@dataclass
class _Stream:
    steps: Generator[Any, Any, None]
    loop: asyncio.AbstractEventLoop  # where the consumer reads `items`
    items: asyncio.Queue[Any]
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: Any = None  # sent into `steps` at its next turn (an exception is thrown in)


class InferenceWorker:
    def __init__(
        self,
        name: str = "ember-inference",
        *,
        run_batch: BatchRunner | None = None,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        """`run_batch` serves the streams' Batched work (without it they may yield none);
        `initializer` runs first on the thread (per-thread settings such as torch's intra-op
        thread count)."""
        self._inbox: queue.SimpleQueue[_Call | _Stream | object] = queue.SimpleQueue()
        self._calls: deque[_Call] = deque()
        self._streams: list[_Stream] = []
        self._outbox: list[tuple[_Stream, Any]] = []  # items not yet handed to their loop
        self._run_batch = run_batch or _no_batched_work
        self._initializer = initializer
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the worker thread and await its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(_Call(fn, future))
        return await asyncio.wrap_future(future)

    def stream(self, steps: Generator[Any, Any, None]) -> AsyncGenerator[Any, None]:
        """Start advancing `steps` on the worker thread now; the returned iterator yields each
        item as soon as it exists.

        Closing the iterator early (client gone), or dropping it unread, cancels the job; the
        worker closes `steps` before its next turn.
        """
        job = _Stream(steps, asyncio.get_running_loop(), asyncio.Queue())
        self._submit(job)
        received = self._receive(job)
        weakref.finalize(received, job.cancelled.set)
        return received

    @staticmethod
    async def _receive(job: _Stream) -> AsyncGenerator[Any, None]:
        try:
            while (item := await job.items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after the current round; unfinished jobs fail with WorkerStopped."""
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    def _submit(self, job: _Call | _Stream) -> None:
        if not self._thread.is_alive():
            raise WorkerStopped(STOPPED_MESSAGE)
        self._inbox.put(job)

    def _run(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while self._collect():
            if self._calls:
                self._run_call(self._calls.popleft())
            if self._streams:
                self._round()
        self._fail_unfinished()

    def _collect(self) -> bool:
        """Take every submitted job, waiting only when there is nothing to do; False on stop."""
        block = not (self._calls or self._streams)
        while True:
            try:
                job = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if job is _STOP:
                return False
            if isinstance(job, _Call):
                self._calls.append(job)
            elif isinstance(job, _Stream):
                self._streams.append(job)
            block = False

    def _round(self) -> None:
        """A turn for every stream, then the batched work they asked for."""
        waiting: list[tuple[_Stream, Any]] = []
        still_running: list[_Stream] = []
        for stream in self._streams:
            if (item := self._turn(stream)) is _END:
                continue
            still_running.append(stream)
            if isinstance(item, Batched):
                waiting.append((stream, item.work))
        self._streams = still_running
        self._flush()
        self._serve(waiting)

    def _turn(self, stream: _Stream) -> Any:
        """Advance `stream` by one item and deliver it; _END once the stream is over."""
        if stream.cancelled.is_set():
            stream.steps.close()
            return _END
        result, stream.result = stream.result, None
        try:
            if isinstance(result, BaseException):
                item = stream.steps.throw(result)
            else:
                item = stream.steps.send(result)
        except StopIteration:
            self._deliver(stream, _END)
            return _END
        except Exception as error:  # handed to the awaiting request
            self._deliver(stream, error)
            return _END
        for ready in item.ready if isinstance(item, Batched) else (item,):
            self._deliver(stream, ready)
        return item

    def _serve(self, waiting: list[tuple[_Stream, Any]]) -> None:
        """Run the round's batched work (also when there is none: the runner may free rows)."""
        try:
            results = self._run_batch([work for _stream, work in waiting])
            answered = list(zip(waiting, results, strict=True))
        except Exception as error:  # thrown into every stream of the round
            answered = [(entry, error) for entry in waiting]
        for (stream, _work), result in answered:
            stream.result = result

    def _fail_unfinished(self) -> None:
        """After a stop: end every stream under way and every job still queued with an error."""
        stopped = WorkerStopped(STOPPED_MESSAGE)
        unfinished: list[object] = [*self._streams, *self._calls]
        while True:
            try:
                unfinished.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for job in unfinished:
            if isinstance(job, _Stream):
                job.steps.close()
                self._deliver(job, stopped)
            elif isinstance(job, _Call) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(stopped)
        self._flush()

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as error:  # handed to the awaiting request
            call.future.set_exception(error)

    def _deliver(self, stream: _Stream, item: Any) -> None:
        self._outbox.append((stream, item))

    def _flush(self) -> None:
        """Hand the round's items to their event loops: one wake-up per loop, not per item."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Any]]] = {}
        for stream, item in self._outbox:
            by_loop.setdefault(stream.loop, []).append((stream, item))
        self._outbox = []
        for loop, deliveries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, deliveries)
            except RuntimeError:  # that event loop is gone, and its requests with it
                for stream, _item in deliveries:
                    stream.cancelled.set()


def _no_batched_work(works: list[Any]) -> list[Any]:
    if works:
        raise RuntimeError("Batched work was yielded to a worker without run_batch")
    return []


def _put_all(deliveries: list[tuple[_Stream, Any]]) -> None:
    for stream, item in deliveries:
        stream.items.put_nowait(item)
