"""Progress of work over many tenants: a bar on a terminal, plain lines elsewhere.

Orchestration code counts (`with track("migrate", total, report) as bar: bar.advance(...)`)
and says nothing about terminals. The CLI turns bars on (use_bars) when standard error is
a terminal: then a rich progress bar shows the counts, the failures and the elapsed time,
and every other message prints above it. Otherwise (a pipe, a log, CI) each tenant done
is one line, as before. Standard output is never used: it stays clean for --json.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator

Report = Callable[[str], None]

_state = {"bars": False, "live": None}
_lock = threading.Lock()


def use_bars(on: bool = True) -> None:
    """Show progress bars (the CLI, when standard error is a terminal)."""
    _state["bars"] = on


def echo(message: str) -> None:
    """Print a progress message on standard error, above a bar that is showing."""
    live = _state["live"]
    if live is not None:
        live.console.print(message, markup=False, highlight=False)
    else:
        print(message, file=sys.stderr, flush=True)


class Tracker:
    """Counts one run: tenants done, failed, of a total."""

    def __init__(self, verb: str, total: int, report: Report, bar=None, task=None):
        self.verb, self.total, self.report = verb, total, report
        self.done = self.failed = 0
        self.started = time.monotonic()
        self._bar, self._task = bar, task

    @property
    def bar(self) -> bool:
        """Whether a bar shows (callers then leave out the lines it replaces)."""
        return self._bar is not None

    def advance(self, tenant: str, result: str = "ok", seconds: float | None = None, failed: bool = False,
                line: str | None = None) -> None:
        """One tenant done. Without a bar, `line` is printed (None: "[n/total] tenant:
        result (seconds)"; "": nothing)."""
        with _lock:
            self.done += 1
            self.failed += failed
            done = self.done
        if self._bar is None:
            took = f" ({seconds:.2f}s)" if seconds is not None else ""
            if line is None:
                line = f"[{done}/{self.total}] {tenant}: {result}{took}"
            if line:
                self.report(line)
            return
        if failed:
            self.report(f"{tenant}: {result}")
        self._bar.update(self._task, advance=1, description=self._description(tenant))

    def _description(self, last: str = "") -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.verb}{failed}" + (f" (last: {last})" if last else "")


@contextlib.contextmanager
def track(verb: str, total: int, report: Report) -> Iterator[Tracker]:
    """A Tracker for `total` tenants; a bar while it runs when bars are on (and no other
    bar shows: an inner run counts in plain lines)."""
    if not _state["bars"] or _state["live"] is not None or total < 2:
        yield Tracker(verb, total, report)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # Standard output stays the command's own (rich would send it to the bar's stream);
    # tenant names and commands are shown as they are, never read as markup.
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=False, redirect_stdout=False)
    with bar:
        _state["live"] = bar
        try:
            tracker = Tracker(verb, total, report, bar, None)
            tracker._task = bar.add_task(tracker._description(), total=total)
            yield tracker
        finally:
            _state["live"] = None


__all__ = ["use_bars", "echo", "track", "Tracker"]
