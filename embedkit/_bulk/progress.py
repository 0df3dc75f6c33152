"""Progress for bulk runs: a tqdm bar, plain log lines, or the caller's own function.

tqdm is the bar the ML ecosystem already uses (sentence-transformers, transformers): a
redrawn line on a terminal, a widget in a notebook. Off a terminal the CLI prints a plain
line every few seconds instead (`ProgressLines`). A progress line holds counts and rates,
never a URL or a token.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FileProgress", "ProgressArg", "ProgressLines", "progress_bar", "reporter"]


def progress_bar(total: int, *, initial: int = 0, **options: Any) -> Any:
    """A tqdm bar for `total` texts on stderr."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="text",
        unit_scale=False,
        desc="embedkit",
        dynamic_ncols=True,
        **options,
    )


@dataclasses.dataclass(frozen=True)
class FileProgress:
    """What a progress callback receives after every block.

    Attributes:
        done: rows written so far (including those of an earlier, interrupted run).
        total: rows in all.
        bad: bad rows among `done` written by this call.
        seconds: since this call started streaming.
        initial: rows already done when this call started.
        retries: retries so far (all causes).
    """

    done: int
    total: int
    bad: int
    seconds: float
    initial: int
    retries: int

    @property
    def rate(self) -> float:
        """Rows per second in this call."""
        return (self.done - self.initial) / self.seconds if self.seconds > 0 else 0.0


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    hours, rest = divmod(int(seconds), 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60:02d}:{rest % 60:02d}"
    )


class ProgressLines:
    """Progress as a plain line every `interval` s, for logs (the CLI off a terminal).

    `embedkit: 1,000/3,000 (33.3%) · 950 texts/s · ETA 00:02 · retries 0`
    """

    def __init__(self, write: Callable[[str], object], interval: float) -> None:
        self.write = write
        self.interval = interval
        self.last = -math.inf

    @staticmethod
    def line(update: FileProgress) -> str:
        rate = update.rate
        eta = (update.total - update.done) / rate if rate > 0 else None
        pct = 100.0 * update.done / update.total if update.total else 100.0
        return (
            f"{update.done:,}/{update.total:,} ({pct:.1f}%) · {rate:,.0f} texts/s · "
            f"ETA {_clock(eta)} · retries {update.retries}"
        )

    def __call__(self, update: FileProgress) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.write(self.line(update))


ProgressArg = bool | Callable[[FileProgress], object] | Any | None


def reporter(
    progress: ProgressArg, total: int, initial: int
) -> Callable[[FileProgress | None], None] | None:
    """What to call with each `FileProgress` (then with None at the end), from `progress=`."""
    if progress is None or progress is False:
        return None
    if progress is True:
        progress = progress_bar(total, initial=initial)
        owned = True
    else:
        owned = False
    if hasattr(progress, "update") and hasattr(progress, "refresh"):  # a tqdm bar
        bar: Any = progress
        if not owned:
            bar.reset(total=total)
            bar.update(initial)
        seen = [initial]

        def tick(update: FileProgress | None) -> None:
            if update is None:
                if owned:
                    bar.close()
                else:
                    bar.refresh()
                return
            bar.set_postfix(retries=update.retries, refresh=False)
            bar.update(update.done - seen[0])
            seen[0] = update.done

        return tick
    if callable(progress):
        callback = progress

        def call(update: FileProgress | None) -> None:
            if update is not None:
                callback(update)

        return call
    raise TypeError(
        "progress must be True, False, None, a tqdm bar or a callable, "
        f"not {type(progress).__name__}"
    )
