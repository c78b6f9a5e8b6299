"""Rich progress per stage while Ray works (silent with --quiet); failures surface as StageFailed."""
from __future__ import annotations

from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn


class Progress:
    def __init__(self, *, quiet: bool = False, title: str = ""):
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.bar = None if quiet else RichProgress(
            TextColumn(f"[bold]{title}[/] {{task.description:<11}}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console, transient=False)

    def __enter__(self) -> "Progress":
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def wait(self, stage: str, refs: list[ray.ObjectRef]) -> list[dict[str, Any]]:
        """Block until every ref is done, updating the stage's bar; results come back in ref order."""
        task = self.bar.add_task(stage, total=len(refs), note="") if self.bar else None
        pending, hits = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            result = ray.get(ready[0])
            hits += bool(result.get("cache_hit"))
            if self.bar:
                self.bar.update(task, advance=1, note=f"cached {hits}" if hits else "")
        return ray.get(refs)
