"""A bound on the pixels being decoded at once across all requests, and memory given back after.

Each upload is decoded at full size before it is shrunk to the model's input, so what the
service holds at a moment is about the sum of the pixels being decoded. `PixelBudget` lets an
upload start decoding only while that sum stays within the budget; the others wait, and after
`max_wait_s` their request is refused with 503 (`Busy`, Retry-After), never left to pile up.
When the budget falls idle after large images, the C heap's free pages are handed back to the
system (`release_free_memory`), so a burst does not leave the process at its peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import AsyncIterator

from anyio import to_thread

from captioner.serve.batching import Busy

# Hand memory back once this many pixels were decoded since the last time and nothing is in
# flight: large uploads only, not every small request.
TRIM_AFTER_PIXELS = 10_000_000


class PixelBudget:
    """At most `total` pixels decoding at once; an upload waits at most `max_wait_s` for room.

    Create it inside the serving event loop (asyncio primitives bind to the loop that first uses them).
    """

    def __init__(self, total: int, max_wait_s: float):
        self.total = total
        self.max_wait_s = max_wait_s
        self.free = total
        self._room = asyncio.Condition()
        self._since_trim = 0  # pixels released since memory was last handed back

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` of the budget (an image larger than all of it waits for all of it).

        Raises Busy when the room is not there within `max_wait_s`.
        """
        pixels = min(pixels, self.total)
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self.free >= pixels), self.max_wait_s)
            except TimeoutError:
                raise Busy(
                    f"the server is decoding {self.total - self.free} pixels of other uploads (at most {self.total} "
                    f"at once) and this image's {pixels} did not fit within {self.max_wait_s:g} s; retry shortly"
                ) from None
            self.free -= pixels
        try:
            yield
        finally:
            async with self._room:
                self.free += pixels
                self._since_trim += pixels
                self._room.notify_all()
                trim = self.free == self.total and self._since_trim >= TRIM_AFTER_PIXELS
                if trim:
                    self._since_trim = 0
            if trim:
                await to_thread.run_sync(release_free_memory)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None on a C library without it (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (all arenas); False where that is not available.

    Freed image buffers stay mapped in the allocator's arenas otherwise, and the resident size
    keeps the peak of the last burst."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
