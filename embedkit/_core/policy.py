"""The batching policy: a model of the server's costs, learned from its answers, that decides
when a batch that is not full is worth sending (`BatchPolicy`)."""

from __future__ import annotations

import math
import time
from collections import deque

import anyio

from .flow import Clock, Sleep

__all__ = ["BatchPolicy"]

#: answers a level needs before its median counts (one or two could be a stall)
_LEVEL_SAMPLES = 3


class BatchPolicy:
    """When is a batch that is not full worth sending? A model learned from the answers.

    Sending the moment a slot frees is right on an idle pipe (no batching delay), and wrong
    under load: each small batch pays the server's fixed cost per request, and once more
    requests are in flight than the server serves at once, they queue *in the server*,
    where every text behind them waits a whole service time more. So the model learns, from
    the latency of each request and how many were in flight when it left:

    * `fixed` and `per_text`: the server's unqueued cost, seconds per request and per text
      (the lower envelope of latency against batch size, over a sliding window);
    * `parallel`: how many requests it serves at once. For each number of requests out when
      a request left (a *level*), the median of its last `samples` slowdowns (latency over
      the unqueued cost of its size): the first level whose median is over 1.15x the least
      median of the *recent* levels is where requests started to queue in the server.
      Comparing levels with each other, not with the floor, keeps a busy event loop (which
      slows every answer alike) from passing for a queueing server; medians keep one stall
      (a garbage collection, another process) from moving a level; and only levels heard
      from within the last `recent` answers set the reference, so a level last seen on an
      idle client (the warm-up) cannot make every level look queued once the loop is busy.
      A level needs 3 answers to count. Until some level shows queueing, `parallel` is the
      concurrency limit; it is never inferred below 2 (one noisy level must not turn the
      client into a one-request-at-a-time Nagle);
    * the arrival rate of texts, over the last `window` seconds.

    A full batch is always sent (it cannot get cheaper). A sub-full batch is sent at once
    while at least one server slot stays free besides the one it would take: the reserve
    keeps the server below saturation, so bursts find a slot. The last free slot takes a
    sub-full batch only if it is big enough for the arrival rate, i.e. batches that size
    keep the server below `utilisation` (`rate * (fixed + per_text * b) / b <= utilisation *
    parallel`), or once its oldest text has waited one `fixed` cost (the ski-rental rule:
    waiting for company never costs more than the request it saves). With every server slot
    busy, a sub-full batch waits for an answer. An idle pipe never waits: a lone text finds
    the whole reserve free.
    """

    def __init__(
        self,
        parallel: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        utilisation: float = 0.85,
        window: float = 0.05,
        samples: int = 16,
        recent: int = 256,
    ) -> None:
        self.parallel = max(1, parallel)
        self.fixed: float | None = None
        self.per_text = 0.0
        self.clock = clock
        self.sleep = sleep
        self.utilisation = utilisation
        self.window = window
        self.queued_answers = 0
        self._maximum = self.parallel
        # requests out when one was sent -> its last answers (texts, seconds), the median of
        # their slowdowns (latency over the unqueued cost of their size, by the current fit;
        # 1.0: no queueing; the event loop's own delays lift all alike), and the answer count
        # when the level was last heard from
        self._levels: dict[int, deque[tuple[int, float]]] = {}
        self._fitted = (0.0, 0.0)  # the fit the medians were computed with
        self._median: dict[int, float] = {}
        self._heard: dict[int, int] = {}
        self._answers = 0
        self._samples = max(1, samples)
        self._recent = recent
        # batch-size bucket (bit length) -> the least latency seen for batches of that size
        self._floor: dict[int, _Floor] = {}
        # arrivals over the window: when, and how many texts (two deques of numbers, not a
        # deque of tuples: a tuple is a tracked object, one per queued call, and a burst of
        # waiting callers' objects is what paces the garbage collector's full passes)
        self._arrival_times: deque[float] = deque()
        self._arrival_counts: deque[int] = deque()
        self._arrived = 0

    # ---------------------------------------------------------------- what it learns

    def arrived(self, now: float, n: int) -> None:
        """`n` texts were queued at `now`."""
        self._arrival_times.append(now)
        self._arrival_counts.append(n)
        self._arrived += n
        if len(self._arrival_times) > 64:
            self._forget(now)

    def rate(self, now: float) -> float:
        """Texts queued per second over the last `window` seconds."""
        self._forget(now)
        return self._arrived / self.window

    def _forget(self, now: float) -> None:
        times = self._arrival_times
        horizon = now - self.window
        while times and times[0] < horizon:
            times.popleft()
            self._arrived -= self._arrival_counts.popleft()

    def observe(self, texts: int, seconds: float, in_flight: int) -> None:
        """A request of `texts` texts, sent with `in_flight` requests out (itself included),
        was answered after `seconds`."""
        key = texts.bit_length()
        floor = self._floor.get(key)
        if floor is None:
            floor = self._floor[key] = _Floor()
        floor.observe(texts, seconds)
        self._fit()
        assert self.fixed is not None
        base = self.fixed + self.per_text * texts
        if base <= 0:
            return
        ratio = seconds / base
        self._answers += 1
        ring = self._levels.get(in_flight)
        if ring is None:
            ring = self._levels[in_flight] = deque(maxlen=self._samples)
        ring.append((texts, seconds))
        self._heard[in_flight] = self._answers
        fixed, per_text = self.fixed, self.per_text
        old_fixed, old_per_text = self._fitted
        if abs(fixed - old_fixed) > 0.01 * fixed or abs(per_text - old_per_text) > 0.01 * per_text:
            # The floor moved: re-read every level by it, or slowdowns measured against an
            # early, rough fit would keep a rarely used level looking queued.
            self._fitted = (fixed, per_text)
            for level in self._levels:
                self._remedian(level)
        else:
            self._remedian(in_flight)
        self._estimate(ratio)

    def _remedian(self, level: int) -> None:
        ring = self._levels[level]
        if len(ring) < _LEVEL_SAMPLES:
            return
        fixed, per_text = self.fixed or 0.0, self.per_text
        ratios = sorted(s / max(fixed + per_text * n, 1e-9) for n, s in ring)
        self._median[level] = ratios[len(ratios) // 2]

    def _estimate(self, ratio: float) -> None:
        medians = self._median
        if not medians:
            return
        horizon = self._answers - self._recent
        heard = self._heard
        reference = min(
            (m for level, m in medians.items() if heard[level] > horizon), default=math.inf
        )
        if reference == math.inf:  # no level heard from lately: keep what we know
            return
        if ratio > 1.15 * reference:
            self.queued_answers += 1
        parallel = self._maximum
        for level in sorted(medians):
            if medians[level] > 1.15 * reference:
                parallel = max(min(2, self._maximum), level - 1)
                break
        self.parallel = parallel

    def _fit(self) -> None:
        floor = self._floor
        keys = sorted(floor)
        lo_s, lo_n = floor[keys[0]].least()
        hi_s, hi_n = floor[keys[-1]].least()
        slope = (hi_s - lo_s) / (hi_n - lo_n) if hi_n > lo_n else 0.0
        self.per_text = max(0.0, slope)
        self.fixed = max(0.0, lo_s - self.per_text * lo_n)

    # -------------------------------------------------------------------- the rule

    def hold(
        self, queued: int, max_batch: int, in_flight: int, waited: float, now: float
    ) -> float | None:
        """None: send a batch now. Else how long to wait at most for more texts (or an
        answer) before asking again; `math.inf` means until an answer comes back.

        `queued` texts are waiting, the oldest for `waited` seconds; `in_flight` requests
        are out.
        """
        if queued >= max_batch or in_flight < self.parallel - 1:
            return None
        if in_flight >= self.parallel:
            return math.inf
        fixed = self.fixed
        if fixed is None or waited >= fixed - 1e-6:  # (a µs early: clocks round)
            return None
        rate = self.rate(now)
        room = self.utilisation * self.parallel - rate * self.per_text
        if room > 0 and queued * room >= rate * fixed:
            return None
        return fixed - waited

    def enough(self, max_batch: int, in_flight: int, now: float) -> int:
        """The fewest queued texts for which `hold` would send at once, with `in_flight`
        requests out at the present arrival rate (the rate grows as texts arrive, so it is
        a lower bound: ask `hold` again when the queue gets there)."""
        if in_flight >= self.parallel:
            return max_batch
        if in_flight < self.parallel - 1 or self.fixed is None:
            return 1
        rate = self.rate(now)
        room = self.utilisation * self.parallel - rate * self.per_text
        if room <= 0:
            return max_batch
        return max(1, min(max_batch, math.ceil(rate * self.fixed / room)))


class _Floor:
    """The least latency seen for one range of batch sizes: a sliding floor, the least of
    the current window of answers and of the window before it (64 answers each), so a
    server that got slower is believed within two windows."""

    __slots__ = ("count", "previous_seconds", "previous_texts", "seconds", "texts")

    def __init__(self) -> None:
        self.seconds = math.inf  # the least latency of this window
        self.texts = 0.0  # the size of the batch it was seen for
        self.previous_seconds = math.inf  # the same, of the window before
        self.previous_texts = 0.0
        self.count = 0  # answers in this window

    def observe(self, texts: int, seconds: float) -> None:
        """A batch of `texts` texts was answered after `seconds`."""
        if seconds < self.seconds:
            self.seconds, self.texts = seconds, float(texts)
        self.count += 1
        if self.count >= 64:
            self.previous_seconds, self.previous_texts = self.seconds, self.texts
            self.seconds, self.texts, self.count = math.inf, 0.0, 0

    def least(self) -> tuple[float, float]:
        """(seconds, texts) of the lower of the two windows' floors."""
        if self.seconds <= self.previous_seconds:
            return self.seconds, self.texts
        return self.previous_seconds, self.previous_texts
