"""Progress for humans on stderr: each stage with its time. Silent when output is --json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape


@dataclass
class Step:
    note: str = ""     # shown after the stage's time, e.g. "cache hit"


class Reporter:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def stage(self, name: str, timings: dict[str, float]) -> Iterator[Step]:
        start = time.perf_counter()
        status = None
        if not self.quiet and self.console.is_terminal:
            status = self.console.status(f"{name} ...")
            status.start()
        step = Step()
        try:
            yield step
        except BaseException:
            if status:
                status.stop()
            if not self.quiet:
                self.console.print(f"[red]✗[/] {name:<10} {time.perf_counter() - start:6.1f}s")
            raise
        timings[name] = round(time.perf_counter() - start, 3)
        if status:
            status.stop()
        if not self.quiet:
            note = f"  ({escape(step.note)})" if step.note else ""
            self.console.print(f"[green]✓[/] {name:<10} {timings[name]:6.1f}s{note}")

    def print(self, text: str) -> None:
        """A line for the human watching; plain text, never markup."""
        if not self.quiet:
            self.console.print(escape(text), soft_wrap=True)
