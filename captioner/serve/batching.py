"""Dynamic batching: items submitted by concurrent requests are run together.

One asyncio task collects items from a queue: after the first item it waits at most
`max_wait_s` for more, up to `max_batch` (see `BatchSettings`), then runs them with `run(key, values)` in one worker
thread (so the event loop stays free to accept and parse the next requests meanwhile).
Items with different keys (decoding options) never share a call. While the worker runs a
batch, the next one fills up, so under load batches grow without any extra waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from captioner.errors import CaptionerError

V = TypeVar("V")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchSettings:
    """How requests are batched: the one place these defaults live (the CLI flags read them)."""

    max_batch: int = 16  # most items run together
    # How long the first item of a batch waits for company. Under load the next batch fills up
    # while the worker runs the current one, so this only matters when traffic is light.
    max_wait_s: float = 0.005
    max_pending: int = 256  # items queued or running; beyond that a request is refused (Busy)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_pending < 1 or self.max_wait_s < 0:
            raise CaptionerError(
                f"batching needs max_batch >= 1, max_pending >= 1 and max_wait_s >= 0; "
                f"got {self.max_batch}, {self.max_pending}, {self.max_wait_s}"
            )


class Busy(CaptionerError):
    """More items are waiting than the batcher accepts; the client should retry later."""


@dataclass
class _Item:
    key: Hashable
    value: Any
    future: asyncio.Future


class Batcher(Generic[V, R]):
    """Runs `run(key, values) -> results` (one result per value, in order) on batches of items.

    Use `async with batcher:` (or `start`/`stop`) inside the event loop that calls `submit`.
    """

    def __init__(self, run: Callable[[Hashable, list[V]], Sequence[R]], settings: BatchSettings | None = None):
        self._run = run
        self.settings = settings or BatchSettings()
        self.pending = 0  # items submitted and not yet answered
        self.batch_sizes: deque[int] = deque(maxlen=1024)  # sizes of the latest runs, for tests and stats
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-batch")
        self._task = asyncio.create_task(self._loop(), name="captioner-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = self._queue = None

    async def __aenter__(self) -> Batcher[V, R]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def submit(self, key: Hashable, values: Sequence[V]) -> list[R]:
        """Queue `values` under `key` and wait for their results (in order).

        Raises Busy, without queueing anything, when that would exceed `max_pending` items.
        """
        if self._queue is None:
            raise RuntimeError("the batcher is not running; use `async with batcher:`")
        limit = self.settings.max_pending
        if self.pending + len(values) > limit:
            raise Busy(f"the server has {self.pending} images waiting (at most {limit}); retry shortly")
        loop = asyncio.get_running_loop()
        items = [_Item(key, value, loop.create_future()) for value in values]
        self.pending += len(items)
        try:
            for item in items:
                self._queue.put_nowait(item)
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self.pending -= len(items)
            for item in items:  # a cancelled request: its queued items are skipped
                item.future.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            for key in dict.fromkeys(item.key for item in batch):
                group = [item for item in batch if item.key == key and not item.future.done()]
                if group:
                    await self._run_group(loop, key, group)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """The first waiting item, then whatever else arrives within max_wait_s, up to max_batch."""
        queue = self._queue
        batch = [await queue.get()]
        deadline = loop.time() + self.settings.max_wait_s
        while len(batch) < self.settings.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run_group(self, loop: asyncio.AbstractEventLoop, key: Hashable, group: list[_Item]) -> None:
        self.batch_sizes.append(len(group))
        try:
            results = await loop.run_in_executor(self._executor, self._run, key, [item.value for item in group])
            if len(results) != len(group):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(group)} items")
        except Exception as error:  # the request fails, the batcher goes on
            for item in group:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in zip(group, results):
            if not item.future.done():
                item.future.set_result(result)
