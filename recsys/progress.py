"""Progress of a long stage (batch re-rank, training, replay sampling), for people and jobs.

Every long stage needs the same three views of how far it is, and they must agree:

* on a terminal, a tqdm bar on stderr (done/total, rate, ETA);
* when stderr is not a terminal (a log file, a Celery worker's log), a plain line every
  `every_s` seconds instead, since a bar's carriage returns make a log unreadable:
  ``batch re-rank: 120/600 users (20%), 3.1 users/s, ETA 2m35s``;
* for a background job, its fraction done in `job_runs.progress` through `report`, which
  is a database write, so it is throttled (at most once per `report_every_s`), never goes
  back, and reaches 1.0 only when the stage ends (`close`, or leaving the `with` block
  without an exception).

Stages nest: `within(report, 0.05, 0.6)` maps a sub-stage's own 0..1 into its part of the
parent's range (training is 0.05..0.6 of a loop turn, recsys.loop).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Report = Callable[[float], None]


def within(report: Report | None, start: float, end: float) -> Report | None:
    """`report` for a sub-stage that is the `start`..`end` part of its parent's work: the
    sub-stage's fraction f is reported as start + f x (end - start). None stays None."""
    if report is None:
        return None

    def mapped(fraction: float) -> None:
        f = min(max(fraction, 0.0), 1.0)
        report(end if f == 1.0 else start + (end - start) * f)  # the end exactly, no rounding

    return mapped


def duration(seconds: float) -> str:
    """45s, 2m35s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """How far one stage is: `update(n)` as units of work finish, `close()` at the end (or
    use it as a context manager). `show`: print anything at all (False under Celery, where
    only `report` matters); `every_s`: seconds between plain lines off a terminal (None: no
    lines); `initial`: units already done before this process started (a resumed run),
    not counted in the rate; `clock` (default time.monotonic) and `stream` (default
    stderr) can be replaced (tests)."""

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "items",
        *,
        show: bool = True,
        every_s: float | None = 30.0,
        report: Report | None = None,
        report_every_s: float = 2.0,
        initial: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total, self.description, self.unit = max(0, int(total)), description, unit
        self.initial = self.done = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        self.every_s = every_s
        self.report_every_s = report_every_s
        self._report = report
        self._started = self._last_line = self.clock()
        self._last_report: float | None = None  # the first update reports at once
        self._reported = -1.0
        self._closed = False
        self._bar = None
        self._lines = False
        if show and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=description,
                unit=f" {unit}",
                initial=self.initial,
                file=self.stream,
                dynamic_ncols=True,
            )
        elif show:
            self._lines = every_s is not None and every_s > 0

    # -- what it says ---------------------------------------------------------------------
    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self._started

    @property
    def rate(self) -> float | None:
        """Units per second in this process (None before anything was done)."""
        elapsed, done = self.elapsed_s, self.done - self.initial
        return done / elapsed if done > 0 and elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None while the rate is unknown)."""
        rate = self.rate
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate else None

    def line(self) -> str:
        """``batch re-rank: 120/600 users (20%), 3.1 users/s, ETA 2m35s``; once closed,
        ``... done in 3m20s`` instead of the ETA."""
        rate, eta = self.rate, self.eta_s
        speed = f"{rate:.3g} {self.unit}/s" if rate is not None else f"? {self.unit}/s"
        if self._closed:
            when = f"done in {duration(self.elapsed_s)}"
        else:
            when = f"ETA {duration(eta)}" if eta is not None else "ETA ?"
        done = f"{self.done}/{self.total} {self.unit} ({100 * self.fraction:.0f}%)"
        return f"{self.description}: {done}, {speed}, {when}"

    # -- driving it -----------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """`n` more units done."""
        if n <= 0 or self._closed:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = self.clock()
        if self._lines and now - self._last_line >= self.every_s:  # type: ignore[operator]
            self._last_line = now
            self._write(self.line())
        due = self._last_report is None or now - self._last_report >= self.report_every_s
        if due and self.fraction < 1.0:  # 1.0 means ended: only `close` says it
            self._send(self.fraction, now)

    def close(self) -> None:
        """The stage has ended: the bar closes, a last line is printed, 1.0 is reported."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._lines:
            self._write(self.line())
        self._send(1.0, self.clock())

    def abandon(self) -> None:
        """The stage failed: close the bar, report nothing more (the job is not done)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def _send(self, fraction: float, now: float) -> None:
        if self._report is None or fraction <= self._reported:
            return
        self._reported, self._last_report = fraction, now
        self._report(fraction)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
