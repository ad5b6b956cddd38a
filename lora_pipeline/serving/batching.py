"""Dynamic batching for the API: concurrent requests (any mix of domains) share forward passes.

Requests wait at most ``wait_ms`` for company, up to ``max_batch`` items (a request is never split: one
larger than ``max_batch`` runs alone, one that does not fit opens the next batch); one worker runs each batch in
a thread, so the event loop keeps accepting requests and forward passes never overlap (on a CPU they
would only compete for the same cores).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, run_batch: Callable[[list[Item]], list[Result]], max_batch: int, wait_ms: float):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self._queue: asyncio.Queue[tuple[list[Item], asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self.stats = {"batches": 0, "texts": 0, "largest_batch": 0}  # shown by GET /health

    async def submit(self, items: list[Item]) -> list[Result]:
        """The results for ``items``, in order; a failing batch raises its error in every request of it."""
        if self._worker is None or self._worker.done():  # started lazily, on the loop that serves requests
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="micro-batcher")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((items, future))
        return await future

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _work(self) -> None:
        queue = self._queue
        held = None  # a request that did not fit the last batch: it opens the next one
        while True:
            batch = [held or await queue.get()]
            held = None
            size = len(batch[0][0])
            if size < self.max_batch and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            while size < self.max_batch and not queue.empty():
                request = queue.get_nowait()
                if size + len(request[0]) > self.max_batch:  # requests are never split: this one waits
                    held = request
                    break
                batch.append(request)
                size += len(request[0])
            flat = [item for items, _ in batch for item in items]
            self.stats.update(batches=self.stats["batches"] + 1, texts=self.stats["texts"] + len(flat),
                              largest_batch=max(self.stats["largest_batch"], len(flat)))
            try:
                results = await asyncio.to_thread(self.run_batch, flat)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for items, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(results[start : start + len(items)])
                start += len(items)
