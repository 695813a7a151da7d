"""Progress of mipo's long stages on stderr: a live display on a terminal, plain lines elsewhere.

Every stage (the plan's passes, generation, training, scoring, judging) reports its progress
the same way: it opens a :class:`Display` (or :func:`track` for a single task) and moves a
:class:`Task` forward. How that is shown is decided here, once, by where stderr goes:

- a terminal: a rich live display, bars redrawn in place (log lines print above them);
- anything else (a file, a pipe, a batch job, CI): plain lines, each flushed at once and
  stamped with the time, for every task when it starts, then at most every
  ``MIPO_PROGRESS_INTERVAL`` seconds (default 30) while it moves, and when it ends::

      [17:45:02] training: 12/50 steps (24%), 13.7 s/step, ETA 8m41s, loss 0.6200, reward acc 0.75

Both modes show the same numbers, computed once per task here: done/total, this run's rate
(work resumed from an earlier run does not count), the time left, and the stage's own details
(training metrics, new tokens/s). ``enabled=False`` (``--no-progress``) or :func:`off` shows
nothing.

>>> with track("scoring", total=3, unit="response", enabled=False) as task:
...     for _ in range(3):
...         task.advance()
>>> task.done
3
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from mipo.errors import ConfigError

__all__ = [
    "DEFAULT_INTERVAL",
    "INTERVAL_ENV",
    "Display",
    "Task",
    "format_duration",
    "interval_from_env",
    "off",
    "track",
]

INTERVAL_ENV = "MIPO_PROGRESS_INTERVAL"
"""Seconds between two plain progress lines of one task (off a terminal)."""

DEFAULT_INTERVAL = 30.0

Mode = Literal["live", "lines", "off"]

_OFF: ContextVar[bool] = ContextVar("mipo_progress_off", default=False)
# The display now showing, if any: a display opened inside it adds its tasks there (rich allows
# one live display at a time, and one stream of lines reads better than two).
_ACTIVE: list[Display] = []


@contextlib.contextmanager
def off(flag: bool = True) -> Iterator[None]:
    """Show no progress inside the block (when ``flag``), whatever the displays opened there ask.

    >>> with off():
    ...     with track("quiet", total=1) as task:
    ...         task.advance()
    """
    token = _OFF.set(_OFF.get() or flag)
    try:
        yield
    finally:
        _OFF.reset(token)


def interval_from_env() -> float:
    """Seconds between plain lines: ``MIPO_PROGRESS_INTERVAL``, else 30.

    >>> interval_from_env() > 0
    True
    """
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(
            f"{INTERVAL_ENV} must be a number of seconds >= 0 (0: a line at every update), "
            f"got {raw!r}"
        )
    return value


def format_duration(seconds: float) -> str:
    """``45s``, ``1m12s``, ``2h05m``.

    >>> [format_duration(s) for s in (4.4, 72, 7500)]
    ['4s', '1m12s', '2h05m']
    """
    total = max(round(seconds), 0)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Task:
    """One counted (``total``) or uncounted piece of work on a :class:`Display`.

    ``unit`` (singular: ``row``, ``step``) names what is counted; ``None`` for a stage that
    only starts and ends (``loading``). ``done``: work already there when the task starts (a
    resumed run); rates count only the work done since. ``tokens_label``: also show a token
    rate (``new tok``) from the ``tokens`` passed to :meth:`advance`. ``since``: the clock time
    the work began, when that was before the task is shown (a step reported once it is over);
    ``done`` is then this run's work.
    """

    def __init__(
        self,
        display: Display,
        description: str,
        *,
        total: int | None,
        done: int,
        unit: str | None,
        tokens_label: str | None,
        detail: Sequence[str],
        since: float | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.done = done
        self.unit = unit
        self.tokens_label = tokens_label
        self.detail: tuple[str, ...] = tuple(detail)
        self.finished = False
        self._complete = True
        self._display = display
        self._first_done = done if since is None else 0
        self._tokens = 0
        self._started = display.clock() if since is None else since
        self._ended: float | None = None
        self._last_line: float | None = None
        self._last_state: tuple[Any, ...] = ()
        self._rich_id: Any = None

    # --- what the stage calls -----------------------------------------------------------------

    def advance(self, n: int = 1, tokens: int = 0) -> None:
        """``n`` more done (and ``tokens`` more tokens); fits a generation ``on_batch`` callback."""
        self.done += n
        self._tokens += tokens
        self._display._changed(self)

    def update(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        detail: Sequence[str] | None = None,
    ) -> None:
        """Set the count, the total or the details (``["loss 0.6200", "reward acc 0.75"]``)."""
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = tuple(detail)
        self._display._changed(self)

    def finish(self, *, complete: bool = True) -> None:
        """End the task (``complete=False``: it stopped early, on an error)."""
        if self.finished:
            return
        self.finished = True
        self._ended = self._display.clock()
        self._display._finished(self, complete=complete)

    # --- the numbers both modes show ----------------------------------------------------------

    def _state(self) -> tuple[Any, ...]:
        return (self.done, self.total, self._tokens, self.detail)

    def elapsed(self) -> float:
        end = self._ended if self._ended is not None else self._display.clock()
        return max(end - self._started, 0.0)

    def count_text(self) -> str:
        """``12/50 steps (24%)``, ``1,200 rows`` (uncounted), or ``""`` for a plain stage."""
        if self.unit is None:
            return ""
        units = f"{self.unit}s"
        if self.total is None:
            return f"{self.done:,} {units}"
        percent = int(100 * self.done / self.total) if self.total > 0 else 100
        return f"{self.done:,}/{self.total:,} {units} ({percent}%)"

    def rate_text(self) -> str:
        """``2.5 rows/s`` when at least one a second, else ``13.7 s/step``; ``""`` before any."""
        new, seconds = self.done - self._first_done, self.elapsed()
        if self.unit is None or new <= 0 or seconds <= 0:
            return ""
        if new >= seconds:
            return f"{new / seconds:,.1f} {self.unit}s/s"
        return f"{seconds / new:,.1f} s/{self.unit}"

    def tokens_text(self) -> str:
        seconds = self.elapsed()
        if self.tokens_label is None or self._tokens <= 0 or seconds <= 0:
            return ""
        return f"{self._tokens / seconds:,.1f} {self.tokens_label}/s"

    def eta(self) -> float | None:
        """Seconds left at this run's rate; ``None`` while unknown."""
        new, seconds = self.done - self._first_done, self.elapsed()
        if self.total is None or self.finished or self.done >= self.total:
            return None
        if new <= 0 or seconds <= 0:
            return None
        return max(self.total - self.done, 0) * seconds / new

    def eta_text(self) -> str:
        left = self.eta()
        return "" if left is None else f"ETA {format_duration(left)}"

    def line(self) -> str:
        """The plain line of the task as it stands (without the time stamp)."""
        count = self.count_text()
        if self.finished:
            verb = "done" if self._complete else "stopped"
            head = f"{self.description}: {verb}" + (f", {count}" if count else "")
            head += f" in {format_duration(self.elapsed())}"
            parts = [self.rate_text(), self.tokens_text(), *self.detail]
        else:
            head = f"{self.description}: {count}" if count else self.description
            parts = [self.rate_text(), self.tokens_text(), self.eta_text(), *self.detail]
        parts = [p for p in parts if p]
        if not parts:
            return head
        return head + (", " if count or self.finished else ": ") + ", ".join(parts)


class Display:
    """The progress display of one stage: rich bars on a terminal, plain lines elsewhere.

    ``enabled=False`` shows nothing. ``stream`` (default: stderr) decides the mode: a terminal
    gets the live display, anything else the lines. ``clock`` and ``interval`` (seconds between
    lines; default ``MIPO_PROGRESS_INTERVAL`` or 30) are there for tests.

    >>> import io
    >>> with Display(stream=io.StringIO()) as display:
    ...     loading = display.task("loading", detail=["model"])
    ...     steps = display.task("training", total=50, unit="step")
    ...     steps.update(done=1, detail=["loss 0.6931"])
    >>> steps.done, steps.total
    (1, 50)
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        self._stream = stream
        self.clock = clock
        self.interval = interval_from_env() if interval is None else interval
        self.mode: Mode = "off"
        if enabled and not _OFF.get():
            self.mode = "live" if _is_terminal(self.stream) else "lines"
        self._tasks: list[Task] = []
        self._host: Display = self
        self._rich: Any = None
        self._open = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def __enter__(self) -> Display:
        if self.mode != "off" and _ACTIVE:
            self._host = _ACTIVE[-1]
            self.mode = self._host.mode
        elif self.mode == "live":
            self._rich = _rich_progress(self._stream)
            self._rich.start()
        if self.mode != "off" and self._host is self:
            _ACTIVE.append(self)
        self._open = True
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(complete=exc_type is None)

    def close(self, *, complete: bool = True) -> None:
        """End every task still running and stop the display (what leaving the block does)."""
        if not self._open:
            return
        for task in self._tasks:
            task.finish(complete=complete)
        self._open = False
        if self._host is self and self.mode != "off":
            if self._rich is not None:
                self._rich.stop()
                self._rich = None
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    def task(
        self,
        description: str,
        *,
        total: int | None = None,
        done: int = 0,
        unit: str | None = None,
        tokens_label: str | None = None,
        detail: Sequence[str] = (),
        since: float | None = None,
    ) -> Task:
        """Start a task (shown at once); see :class:`Task` for the arguments."""
        task = Task(
            self._host,
            description,
            total=total,
            done=done,
            unit=unit,
            tokens_label=tokens_label,
            detail=detail,
            since=since,
        )
        self._tasks.append(task)
        self._host._started(task)
        return task

    # --- the two modes ------------------------------------------------------------------------

    def _started(self, task: Task) -> None:
        if self.mode == "live":
            task._rich_id = self._rich.add_task(
                task.description, total=task.total, completed=task.done, **_rich_fields(task)
            )
        elif self.mode == "lines" and not (task.total is not None and task.done >= task.total):
            self._write(task)  # (a task that arrives complete gets only its end line)

    def _changed(self, task: Task) -> None:
        if task.finished:
            return
        if self.mode == "live":
            self._rich.update(
                task._rich_id, total=task.total, completed=task.done, **_rich_fields(task)
            )
        elif self.mode == "lines":
            # A line only when something moved (an update repeating the last line's numbers,
            # such as the Trainer's closing log entry, adds nothing) and the interval has passed.
            last = task._last_line
            moved = task._state() != task._last_state
            if moved and (last is None or self.clock() - last >= self.interval):
                self._write(task)

    def _finished(self, task: Task, *, complete: bool) -> None:
        task._complete = complete
        if self.mode == "live":
            total, completed = task.total, task.done
            if total is None and complete:  # an uncounted stage that ended: draw it full
                total = completed = max(task.done, 1)
            self._rich.update(task._rich_id, total=total, completed=completed, **_rich_fields(task))
            self._rich.stop_task(task._rich_id)
        elif self.mode == "lines":
            self._write(task)

    def _write(self, task: Task) -> None:
        task._last_line = self.clock()
        task._last_state = task._state()
        stream = self.stream
        stream.write(f"[{time.strftime('%H:%M:%S')}] {task.line()}\n")
        stream.flush()


@contextlib.contextmanager
def track(
    description: str,
    *,
    total: int | None = None,
    done: int = 0,
    unit: str | None = "row",
    tokens_label: str | None = None,
    enabled: bool = True,
    stream: TextIO | None = None,
) -> Iterator[Task]:
    """A :class:`Display` holding one task, for a stage that counts one thing.

    >>> with track("judging", total=2, unit="response", enabled=False) as task:
    ...     task.advance(2)
    >>> task.done
    2
    """
    with Display(enabled, stream=stream) as display:
        yield display.task(
            description, total=total, done=done, unit=unit, tokens_label=tokens_label
        )


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed stream
        return False


def _rich_fields(task: Task) -> dict[str, str]:
    if task.unit is None:
        count = ""
    elif task.total is None:
        count = f"{task.done:,}"
    else:
        count = f"{task.done:,}/{task.total:,}"
    rates = ", ".join(t for t in (task.rate_text(), task.tokens_text()) if t)
    left = task.eta()
    return {
        "count": count,
        "rates": rates,
        "detail": "  ".join(task.detail),
        "eta": "" if left is None else f"eta {format_duration(left)}",
    }


def _rich_progress(stream: TextIO | None) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[rates]}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}", style="progress.remaining"),
        console=Console(file=stream) if stream is not None else Console(stderr=True),
    )
