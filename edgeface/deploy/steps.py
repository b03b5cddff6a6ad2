"""The deploy's progress on the terminal: one line per step with its time (a no-op without a console)."""
from __future__ import annotations

import time
from typing import Callable


class Steps:
    """Rich progress: one line per step with its time (a no-op without a console)."""

    def __init__(self, console=None):
        self.console = console
        self.times: dict[str, float] = {}
        self._progress = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def run(self, name: str, fn: Callable, *args, **kwargs):
        task = self._progress.add_task(name, total=1) if self._progress else None
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            if task is not None:
                self._progress.update(task, description=f"[red]{name} (failed)[/red]")
            raise
        self.times[name] = time.perf_counter() - t0
        if task is not None:
            self._progress.update(task, completed=1, description=f"[green]{name}[/green]")
        return result

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"  {text}", highlight=False, soft_wrap=True)
