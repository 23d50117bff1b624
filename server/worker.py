"""One thread that owns the model: every forward pass of the server runs here, never on the loop.

Streaming generations are interleaved token by token (round robin), so a long reply does not
hold up a short one, and one-off calls (inspect, logits, ...) run between two tokens. Each job
carries its own state, so interleaving never mixes two requests' steering.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()  # a stream's last item
_STOP = object()  # tells the thread to exit
STOPPED_MESSAGE = "The inference worker has stopped; the server is shutting down."


class WorkerStopped(RuntimeError):
    """The worker was closed before it could run the job."""


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


@dataclass
class _Stream:
    steps: Iterator[Any]
    deliver: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class InferenceWorker:
    def __init__(self, name: str = "ember-inference") -> None:
        self._inbox: queue.SimpleQueue[_Call | _Stream | object] = queue.SimpleQueue()
        self._streams: deque[_Stream] = deque()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the worker thread and await its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(_Call(fn, future))
        return await asyncio.wrap_future(future)

    async def stream(self, steps: Iterator[T]) -> AsyncGenerator[T, None]:
        """Advance `steps` on the worker thread, yielding each item as soon as it exists.

        Closing the returned iterator early (client gone) cancels the job; the worker closes
        `steps` before its next step.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        job = _Stream(steps, deliver)
        self._submit(job)
        try:
            while (item := await items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after the current step; unfinished jobs fail with WorkerStopped."""
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    def _submit(self, job: _Call | _Stream) -> None:
        if not self._thread.is_alive():
            raise WorkerStopped(STOPPED_MESSAGE)
        self._inbox.put(job)

    def _run(self) -> None:
        while (job := self._next_job()) is not _STOP:
            if isinstance(job, _Call):
                self._run_call(job)
            elif isinstance(job, _Stream):
                self._streams.append(job)
            if self._streams:
                self._advance(self._streams.popleft())
        self._fail_unfinished()

    def _fail_unfinished(self) -> None:
        """After a stop: end every stream under way and every job still queued with an error."""
        stopped = WorkerStopped(STOPPED_MESSAGE)
        unfinished: list[object] = [*self._streams]
        while True:
            try:
                unfinished.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for job in unfinished:
            if isinstance(job, _Stream):
                _close_quietly(job.steps)
                self._deliver(job, stopped)
            elif isinstance(job, _Call) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(stopped)

    def _next_job(self) -> _Call | _Stream | object | None:
        """The next submitted job; waits only when no stream has steps left to run."""
        try:
            return self._inbox.get(block=not self._streams)
        except queue.Empty:
            return None

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as error:  # handed to the awaiting request
            call.future.set_exception(error)

    def _advance(self, stream: _Stream) -> None:
        if stream.cancelled.is_set():
            _close_quietly(stream.steps)
            return
        try:
            item = next(stream.steps)
        except StopIteration:
            self._deliver(stream, _END)
            return
        except Exception as error:  # handed to the awaiting request
            self._deliver(stream, error)
            return
        self._deliver(stream, item)
        self._streams.append(stream)

    @staticmethod
    def _deliver(stream: _Stream, item: Any) -> None:
        try:
            stream.deliver(item)
        except RuntimeError:  # the request's event loop is gone
            stream.cancelled.set()


def _close_quietly(steps: Iterator[Any]) -> None:
    close = getattr(steps, "close", None)
    if close is not None:
        close()
