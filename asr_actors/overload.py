"""Is this process keeping up? The lag of its event loop, for admission to refuse or defer new work.

A process that takes on more sessions than its CPU can serve does not slow down evenly: every task runs
late, heartbeats and pub/sub checks included, and on the Redis bus its inbox falls behind until Redis
cuts it off and every session it holds is lost. So new work is refused (a gateway: 503 with
`Retry-After` before the upgrade) or not taken (a worker: no claims) while the loop runs late, and the
sessions already admitted keep their share.

The lag is what a task that asked to wake up after `interval` sees on waking: how long the loop was busy
with other work. It is sampled continuously (the only periodic task here: lateness has no event to wait
on), and the process counts as overloaded while the largest lag of the last `window` samples is over the
limit, so one late wake-up does not flip admission back and forth.
"""

from __future__ import annotations

import collections

import trio


class LoopLag:
    def __init__(self, limit: float, interval: float = 0.05, window: int = 10) -> None:
        self._limit = limit
        self._interval = interval
        self._samples: collections.deque[float] = collections.deque(maxlen=window)
        # Set while the process keeps up; a fresh, unset one while it is overloaded.
        self._calm = trio.Event()
        self._calm.set()
        # How often the process turned overloaded (for metrics and logs).
        self.episodes = 0

    @property
    def lag(self) -> float:
        """The largest lag of the recent samples, in seconds."""
        return max(self._samples, default=0.0)

    @property
    def overloaded(self) -> bool:
        return not self._calm.is_set()

    async def wait_calm(self) -> None:
        """Until the process keeps up again."""
        await self._calm.wait()

    async def run(self) -> None:
        while True:
            asked = trio.current_time() + self._interval
            await trio.sleep_until(asked)
            self.sample(trio.current_time() - asked)

    def sample(self, lag: float) -> None:
        self._samples.append(lag)
        if self.lag > self._limit:
            if self._calm.is_set():
                self._calm = trio.Event()
                self.episodes += 1
        elif not self._calm.is_set():
            self._calm.set()
