"""A rich progress bar for long jobs that also logs plain lines when output is not a terminal
(a background run writing to a log file still shows how it is going)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, description: str, total: int, start: int = 0, log_every_s: float = 30.0):
        self.console = Console(stderr=True)
        self.description, self.total, self.start = description, total, start
        self.log_every_s, self._last_log = log_every_s, 0.0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
                                 TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task(self.description, total=self.total,
                                           completed=self.start, metrics="")
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, completed: int, **metrics: float) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.progress.update(self.task, completed=completed, metrics=text)
        now = time.monotonic()
        if not self.console.is_terminal and (now - self._last_log > self.log_every_s
                                             or completed == self.total):
            self._last_log = now
            print(f"{self.description}: {completed}/{self.total}  {text}", flush=True)
