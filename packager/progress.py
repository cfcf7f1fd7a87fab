"""Progress for humans on stderr: each stage with its time. Silent when output is --json.

A stage that takes minutes (exporting or quantizing a 1B model) shows where it is: on a terminal,
a status line with the elapsed time and the stage's last word on its progress (`3/113 weights
(/model/layers.0/mlp/up_proj/MatMul)`); elsewhere (a CI log, a pipe), a line now and then with the
same, at most every `every_s` seconds, and a heartbeat every `heartbeat_s` when the stage says nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape


@dataclass
class Step:
    note: str = ""     # shown after the stage's time, e.g. "cache hit"
    name: str = ""
    start: float = field(default_factory=time.perf_counter)
    detail: str = ""   # the stage's last word on its progress
    reporter: Reporter | None = None
    printed: float = field(default_factory=time.perf_counter)   # when a line was last printed for it

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, detail: str) -> None:
        """The stage's progress, as a short line; shown with the elapsed time."""
        self.detail = detail
        if self.reporter is not None:
            self.reporter.progress(self)


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self.every_s = 10.0      # off a terminal: the least time between two progress lines of a stage
        self.heartbeat_s = 30.0  # off a terminal: a line after this long without one
        self._status: Any = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str, timings: dict[str, float]) -> Iterator[Step]:
        step = Step(name=name, reporter=None if self.quiet else self)
        start = step.start
        status = None
        if not self.quiet and self.console.is_terminal:
            status = self.console.status(f"{name} ...")
            status.start()
        self._status = status
        done = threading.Event()
        ticker = None
        if not self.quiet:
            ticker = threading.Thread(target=self._tick, args=(step, done), daemon=True)
            ticker.start()
        try:
            yield step
        except BaseException:
            self._finish(done, ticker, status)
            if not self.quiet:
                self.console.print(f"[red]✗[/] {name:<10} {time.perf_counter() - start:6.1f}s")
            raise
        timings[name] = round(time.perf_counter() - start, 3)
        self._finish(done, ticker, status)
        if not self.quiet:
            note = f"  ({escape(step.note)})" if step.note else ""
            self.console.print(f"[green]✓[/] {name:<10} {timings[name]:6.1f}s{note}")

    def _finish(self, done: threading.Event, ticker: threading.Thread | None, status: Any) -> None:
        done.set()
        if ticker is not None:
            ticker.join()
        with self._lock:
            self._status = None
            if status:
                status.stop()

    def _tick(self, step: Step, done: threading.Event) -> None:
        """Once a second: the elapsed time on the terminal's status line, or a heartbeat line off it."""
        while not done.wait(1.0):
            if self.console.is_terminal:
                self.progress(step)
            elif time.perf_counter() - step.printed >= self.heartbeat_s:
                self._line(step)

    def progress(self, step: Step) -> None:
        if self.quiet:
            return
        if self.console.is_terminal:
            with self._lock:
                if self._status is not None:
                    detail = f" · {escape(step.detail)}" if step.detail else ""
                    self._status.update(f"{step.name} {step.elapsed():.0f}s{detail}")
        elif time.perf_counter() - step.printed >= self.every_s:
            self._line(step)

    def _line(self, step: Step) -> None:
        with self._lock:
            step.printed = time.perf_counter()
            detail = f": {step.detail}" if step.detail else " ..."
            self.console.print(escape(f"  {step.name:<10} {step.elapsed():6.0f}s{detail}"), soft_wrap=True)

    def print(self, text: str) -> None:
        """A line for the human watching; plain text, never markup."""
        if not self.quiet:
            self.console.print(escape(text), soft_wrap=True)
