"""Plan deadlines kept by one watchdog, instead of a timer per plan.

asyncio.timeout() (or wait_for) arms a loop timer for every plan and cancels it after: a heap
push, a heap pop of a cancelled handle and a reschedule, a visible share of a worker's CPU per
request on a fast model. Plan deadlines are seconds long, so one
watchdog that looks every 100 ms is exact enough; it cancels the task running a plan past its
deadline, and the plan's `expired()` check turns that cancellation into a failed plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

CHECK_EVERY_S = 0.1


class PlanDeadlines:
    def __init__(self) -> None:
        self._running: dict[int, tuple[float, asyncio.Task]] = {}
        self._expired: set[int] = set()
        self._token = 0
        self._watchdog: asyncio.Task | None = None
        # The loop, asked for once: asyncio.current_task() without it makes a getpid() system
        # call per plan (get_running_loop's fork check).
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, deadline_s: float, task: asyncio.Task | None = None) -> int:
        """Watch `task` (None: the current one) until finish(token); cancelled when `deadline_s`
        is over. A lane that runs plan after plan passes its own task: asking for the current one
        per plan is a visible share of a fast model's CPU per request."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if task is None:
            task = asyncio.current_task(self._loop)
            assert task is not None, "a plan runs inside a task on the loop of the first"
        token = self._token = self._token + 1
        self._running[token] = (time.monotonic() + deadline_s, task)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self._loop.create_task(self._watch())
        return token

    def expired(self, token: int) -> bool:
        """Called on CancelledError: True when the watchdog did it (and the cancellation is then
        taken back, so it does not reach the lane); False for anyone else's cancellation."""
        if token not in self._expired:
            return False
        task = self._running[token][1]
        return task.uncancel() == 0  # someone else cancelled as well: theirs goes on

    def finish(self, token: int) -> None:
        self._running.pop(token, None)
        if self._expired:
            self._expired.discard(token)

    async def _watch(self) -> None:
        while self._running:
            await asyncio.sleep(CHECK_EVERY_S)
            now = time.monotonic()
            for token, (deadline, task) in list(self._running.items()):
                if now >= deadline and token not in self._expired:
                    self._expired.add(token)
                    task.cancel()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
