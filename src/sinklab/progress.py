"""One progress display for every long loop (scan, explain, train, eval-stream).

On a terminal: a rich bar (description, bar, done/total, rate, elapsed, ETA). Otherwise (CI, ``nohup``, a log
file): plain lines on stderr, one at the start, one whenever the description changes, one every ``interval``
seconds (also while a single slow step runs) and one when it reaches its total (nothing more after that but news),
each with percent, rate and ETA. The interface
is the subset of ``rich.progress.Progress`` the loops use: ``add_task``, ``advance``, ``update``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    info: str = ""
    started: float = field(default_factory=time.perf_counter)
    last_line: float = 0.0
    ended: float | None = None  # when it reached its total: its last line is printed then, and never again

    def line(self) -> str:
        elapsed = (self.ended or time.perf_counter()) - self.started
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}:"]
        if self.total:
            parts.append(f"{100 * self.completed / self.total:3.0f}% ({self.completed:g}/{self.total:g})")
        else:
            parts.append(f"{self.completed:g} done")
        parts.append(f"{rate:.2f}/s, elapsed {_duration(elapsed)}")
        if self.total and rate > 0 and self.completed < self.total:
            parts.append(f"ETA {_duration((self.total - self.completed) / rate)}")
        if self.info:
            parts.append(self.info)
        return " ".join(parts[:2]) + ", " + ", ".join(parts[2:])


class Progress:
    """Progress of long loops: a rich bar on a terminal, periodic plain lines on stderr otherwise.

    ``disable`` shows nothing; ``interval`` is the most seconds between plain lines; ``file`` defaults to stderr.
    """

    def __init__(self, *, disable: bool = False, interval: float = 10.0, file: TextIO | None = None):
        self.disable, self.interval, self._file = disable, interval, file
        self._tasks: list[_Task] = []
        self._rich = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def file(self) -> TextIO:
        return self._file or sys.stderr

    def __enter__(self) -> Progress:
        if not self.disable and self.file.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._rich = RichProgress(*columns, console=Console(file=self.file), transient=True)
            self._rich.__enter__()
        elif not self.disable and self.interval > 0:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True)
            self._heartbeat.start()
        return self

    def _beat(self) -> None:
        """A line per task every ``interval`` seconds even when no step finishes in between."""
        while not self._stop.wait(self.interval / 4):
            for task in self._tasks:
                if task.ended is None and time.perf_counter() - task.last_line >= self.interval:
                    self._print(task)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        elif not self.disable and exc[0] is None:
            for task in self._tasks:  # the final state of those not finished (the others said theirs)
                if task.ended is None:
                    self._print(task)

    def _print(self, task: _Task) -> None:
        with self._lock:
            task.last_line = time.perf_counter()
            print(f"sinklab: {task.line()}", file=self.file, flush=True)

    def add_task(self, description: str, total: float | None = None, info: str = "") -> int:
        """Start a task; returns its id for ``advance`` and ``update``."""
        self._tasks.append(_Task(description, total, info=info))
        if self._rich is not None:
            return self._rich.add_task(description, total=total, info=info)
        if not self.disable:
            self._print(self._tasks[-1])
        return len(self._tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        advance: float = 0,
        description: str | None = None,
        total: float | None = None,
        info: str | None = None,
    ) -> None:
        """Move a task on by ``advance`` and/or change its description, total or trailing info."""
        task = self._tasks[task_id]
        task.completed += advance
        renamed = description is not None and description != task.description
        new_info = info is not None and info != task.info
        task.description = task.description if description is None else description
        task.total = task.total if total is None else total
        task.info = task.info if info is None else info
        if self._rich is not None:
            self._rich.update(task_id, advance=advance, description=task.description, total=task.total, info=task.info)
            return
        if self.disable:
            return
        if task.ended is not None:  # finished: a line only for news (a final evaluation's info)
            if renamed or new_info:
                self._print(task)
        elif task.total and task.completed >= task.total:
            task.ended = time.perf_counter()
            self._print(task)  # its final line
        elif renamed or time.perf_counter() - task.last_line >= self.interval:
            self._print(task)


@contextmanager
def status(text: str, file: TextIO | None = None) -> Iterator[None]:
    """A spinner with ``text`` on a terminal; nothing otherwise (a bad-input error after it stays the only line)."""
    file = file or sys.stderr
    if not file.isatty():
        yield
        return
    from rich.console import Console

    with Console(file=file).status(text):
        yield
